"""Warm blob throughput: wrk with 1 and 32 clients on the 20 MiB and 200 MiB blobs, after
every side answers them from its cache; bytes read / duration, in MB/s. Target (issue 17):
ours at least 0.95 times nginx."""

from __future__ import annotations

from typing import Any

from bench.figures.wrk_driver import WrkLoad, describe, run_load, runs_json
from bench.harness import BenchImage, Side
from bench.load import WrkResult
from bench.rows import MB, Row, by_side
from bench.session import Bench

BLOBS = ("20m", "200m")  # seeded image keys
SHAPES = ((1, 1), (32, 2))  # wrk connections, threads
NGINX_SHARE = 0.95  # of nginx's throughput ours must reach


def blob(bench: Bench) -> None:
    """Warm blob throughput with 1 and 32 clients, 20 MiB and 200 MiB blobs."""
    raw: list[dict[str, Any]] = []
    for key in BLOBS:
        image = bench.image(key)
        for connections, threads in SHAPES:
            raw.append(_cell(bench, key, image, connections, threads))
    bench.raw["blob"] = raw


def mb_per_s(result: WrkResult) -> float:
    return result.bytes / MB / result.duration_s


def _cell(
    bench: Bench, key: str, image: BenchImage, connections: int, threads: int
) -> dict[str, Any]:
    """One blob with one number of clients: its row, and its raw runs for the record."""
    label = f"{key[:-1]} MiB blob, {connections} client{'s' * (connections > 1)}"
    bench.log(f"  warm blob: {label}")

    def observe(side: Side, result: WrkResult) -> None:
        bench.log(describe(result, f"{mb_per_s(result):9.1f} MB/s"))
        ups = result.extra["upstream_requests"]
        if ups["blob_get"]:
            bench.warn(f"{side.label}: {ups['blob_get']} upstream blob GETs in a warm run")
        if key == "200m" and connections == 32:
            bench.warm_rss.setdefault(side.label, []).append(result.extra["peak_rss_MB"])

    load = WrkLoad(image.blob_path, connections, threads, headers={}, timeout=60)
    runs = run_load(bench, load, observe)
    row = Row.of(
        f"blob.{key}.c{connections}",
        "warm blob throughput",
        label,
        "MB/s",
        "higher",
        by_side(runs, mb_per_s),
    )
    row.at_least("nginx", NGINX_SHARE)
    bench.rows.append(row)
    return {
        "image": key,
        "blob_bytes": image.layer_size,
        "connections": connections,
        "threads": threads,
        "runs": runs_json(runs),
    }
