"""Warm manifest GETs: wrk `--latency` with an `Accept` header, by tag and by digest, with
1 and 64 clients; requests/s, p50 and p99 latency. Targets at 64 clients (issue 17): ours at
least half of nginx's requests/s, with a p99 at most twice nginx's."""

from __future__ import annotations

from typing import Any

from bench.figures.wrk_driver import WrkLoad, describe, run_load, runs_json
from bench.harness import MANIFEST_ACCEPT, Side
from bench.load import WrkResult
from bench.rows import Row, by_side
from bench.session import Bench

SHAPES = ((1, 1), (64, 2))  # wrk connections, threads
TARGET_CONNECTIONS = 64
NGINX_RPS_SHARE = 0.5  # of nginx's requests/s ours must reach
NGINX_P99_TIMES = 2.0  # times nginx's p99 ours may take


def manifest(bench: Bench) -> None:
    """Warm manifest GETs by tag and by digest, 1 and 64 clients."""
    image = bench.image("small")
    raw: list[dict[str, Any]] = []
    for by, ref in (("tag", image.tag), ("digest", image.manifest_digest)):
        path = image.manifest_path(ref)
        for connections, threads in SHAPES:
            raw.append(_cell(bench, by, path, connections, threads))
    bench.raw["manifest"] = raw


def _cell(bench: Bench, by: str, path: str, connections: int, threads: int) -> dict[str, Any]:
    """One way of asking with one number of clients: its rows, and its raw runs."""
    label = f"{connections} client{'s' * (connections > 1)}"
    bench.log(f"  warm manifest by {by}: {label}")

    def observe(side: Side, result: WrkResult) -> None:
        lat = result.latency_ms
        bench.log(
            describe(
                result,
                f"{result.rps:9.0f} req/s p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms",
            )
        )

    load = WrkLoad(path, connections, threads, headers={"Accept": MANIFEST_ACCEPT}, timeout=10)
    runs = run_load(bench, load, observe)
    bench.rows += _rows(by, connections, label, runs)
    return {
        "by": by,
        "path": path,
        "connections": connections,
        "threads": threads,
        "runs": runs_json(runs),
    }


def _rows(by: str, connections: int, label: str, runs: dict[str, list[WrkResult]]) -> list[Row]:
    """Requests/s, p50 and p99 latency; at 64 clients with targets."""
    base = f"manifest.{by}.c{connections}"
    figure = f"manifest by {by}"
    rps_row = Row.of(
        f"{base}.rps", figure, label + ": requests/s", "req/s", "higher", by_side(runs, _rps)
    )
    p50_row = Row.of(
        f"{base}.p50",
        figure,
        label + ": p50 latency",
        "ms",
        "lower",
        by_side(runs, lambda r: r.latency_ms["p50"]),
    )
    p99_row = Row.of(
        f"{base}.p99",
        figure,
        label + ": p99 latency",
        "ms",
        "lower",
        by_side(runs, lambda r: r.latency_ms["p99"]),
    )
    if connections == TARGET_CONNECTIONS:
        rps_row.at_least("nginx", NGINX_RPS_SHARE)
        p99_row.at_most("nginx", NGINX_P99_TIMES)
    return [rps_row, p50_row, p99_row]


def _rps(result: WrkResult) -> float:
    return result.rps
