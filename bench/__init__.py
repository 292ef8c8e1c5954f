"""The side-by-side benchmark of the mirror against the Go distribution registry in proxy mode.

Run it with `scripts/bench` (or `python -m bench --help` inside the virtualenv). Modules:

    harness.py   the processes: token server, upstream registry (seeded), our mirror, the
                 reference proxy; process-tree RSS and CPU accounting
    load.py      the load generators: wrk (with a Lua script for headers and a
                 machine-readable summary) and curl (single and parallel transfers)
    session.py   a run's shared state: options, rows taken so far, the order of the sides,
                 upstream request counts, warming a mirror
    figures/     the measurements, each figure for both servers, alternating (one module
                 per figure, the wrk driver, and the table of figures in `__init__`)
    rows.py      one table row: a figure's medians for both sides, its target, its JSON
    report.py    the table with targets, the JSON record and the PNG chart
    machine.py   facts about the machine and the software under test
    cli.py       the command line and the order of the run
    soak.py      `python -m bench.soak`, the bounded load test (its fake upstream in
                 soak_upstream.py)
"""
