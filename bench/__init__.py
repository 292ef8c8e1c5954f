"""The side-by-side benchmark of the mirror against the Go distribution registry in proxy mode
and nginx with `proxy_cache`, all in front of the same upstream.

Run it with `scripts/bench` (or `python -m bench --help` inside the virtualenv). Modules:

    harness.py   the processes: token server, upstream registry (seeded), our mirror,
                 distribution's proxy, nginx; process-tree RSS and CPU accounting
    nginx_cache.py  nginx's proxy_cache configuration and process (a peer)
    load.py      the load generators: wrk (with a Lua script for headers and a
                 machine-readable summary) and curl (single and parallel transfers)
    session.py   a run's shared state: options, rows taken so far, the order of the sides,
                 upstream request counts, warming a side
    figures/     the measurements, each figure for every side, rotating (one module per
                 figure, the wrk driver, and the table of figures in `__init__`)
    rows.py      one table row: a figure's medians for ours and its peers, its targets,
                 its JSON
    report.py    the table with targets, the JSON record, the Markdown table, the PNG chart
    machine.py   facts about the machine and the software under test
    cli.py       the command line and the order of the run
    cluster.py   `python -m bench.cluster`, replicas on S3 against distribution's proxies
                 (its processes in cluster_harness.py)
    soak.py      `python -m bench.soak`, the bounded load test (its fake upstream in
                 soak_upstream.py)
"""
