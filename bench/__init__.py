"""The side-by-side benchmark of the mirror against the Go distribution registry in proxy mode.

Run it with `scripts/bench` (or `python -m bench --help` inside the virtualenv). Modules:

    harness.py   the processes: token server, upstream registry (seeded), our mirror, the
                 reference proxy; process-tree RSS and CPU accounting
    load.py      the load generators: wrk (with a Lua script for headers and a
                 machine-readable summary) and curl (single and parallel transfers)
    figures.py   the measurements, each figure for both servers, alternating
    report.py    the table with targets, the JSON record and the PNG chart
    machine.py   facts about the machine and the software under test
    cli.py       the command line and the order of the run
"""
