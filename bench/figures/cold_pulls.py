"""Cold pulls of the 200 MiB blob, each mirror restarted with an empty cache first: one
client (time to first byte and total time, next to the upstream's own), and many clients at
once (time until the last is done, and how often the upstream was asked for the blob)."""

from __future__ import annotations

from typing import Any

from bench.harness import BenchImage, ProcessTree, Side
from bench.load import CurlResult, curl, curl_parallel
from bench.rows import MB, Row, by_side, fetches_row, median
from bench.session import Bench

UPSTREAM_SAMPLES = 5  # direct upstream GETs per repetition of the cold figure


def cold(bench: Bench) -> None:
    """One client, 200 MiB blob, empty cache (each mirror restarted with fresh storage
    before every run; auth primed the same way for both): time to first byte and total
    time, next to the upstream's own for the same blob."""
    image = bench.image("200m")
    token = bench.harness.token.token(f"repository:{image.repo}:pull")
    auth = {"Authorization": f"Bearer {token}"}
    upstream_runs: list[CurlResult] = []
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for rep in range(bench.options.cold_repeat):
        upstream_runs += _upstream_direct(bench, image, auth)
        for side in bench.order(rep):
            runs[side.label].append(_cold_run(bench, side, image))
    up_ttfb = median([r.ttfb_s * 1000 for r in upstream_runs])
    up_total = median([r.total_s for r in upstream_runs])
    assert up_ttfb is not None and up_total is not None
    bench.rows += _cold_rows(runs, up_ttfb, up_total)
    bench.raw["cold"] = {
        "blob_bytes": image.layer_size,
        "auth": "primed before every run: one manifest GET by digest through the mirror",
        "upstream_direct": [r.__dict__ for r in upstream_runs],
        "upstream_direct_median": {"ttfb_ms": up_ttfb, "total_s": up_total},
        "runs": runs,
    }


def _upstream_direct(bench: Bench, image: BenchImage, auth: dict[str, str]) -> list[CurlResult]:
    """The blob straight from the upstream, `UPSTREAM_SAMPLES` times: its own time to first
    byte varies by several ms from one request to the next, and it is cheap to sample more
    often than the mirrors."""
    samples: list[CurlResult] = []
    for _ in range(UPSTREAM_SAMPLES):
        result = curl(bench.up.url + image.blob_path, auth)
        check(result, image, "upstream")
        samples.append(result)
    bench.log(
        "    upstream direct: TTFB "
        + ", ".join(f"{r.ttfb_s * 1000:.1f}" for r in samples)
        + f" ms; total {samples[-1].total_s:.2f} s"
    )
    return samples


def _cold_run(bench: Bench, side: Side, image: BenchImage) -> dict[str, Any]:
    """`side` restarted empty, auth primed, then one curl of the blob."""
    side.restart_fresh()
    bench.prime_auth(side, image)
    bench.up.reset_counts()
    result = curl(side.url + image.blob_path)
    check(result, image, side.label)
    fetches = bench.settled_blob_gets(image.layer_digest)
    bench.log(
        f"    {side.label:>6} cold: TTFB {result.ttfb_s * 1000:.1f} ms, "
        f"total {result.total_s:.2f} s, upstream fetches {fetches}"
    )
    return {**result.__dict__, "upstream_blob_gets": fetches}


def _cold_rows(runs: dict[str, list[dict[str, Any]]], up_ttfb: float, up_total: float) -> list[Row]:
    ttfb_row = Row.of(
        "cold.ttfb",
        "cold blob",
        "200 MiB, 1 client: time to first byte",
        "ms",
        "lower",
        by_side(runs, lambda r: r["ttfb_s"] * 1000),
    )
    ttfb_row.target = f"ours ≤ upstream {up_ttfb:.1f} + 10 ms"
    ttfb_row.passed = ttfb_row.ours is not None and ttfb_row.ours <= up_ttfb + 10
    total_row = Row.of(
        "cold.total",
        "cold blob",
        "200 MiB, 1 client: total time",
        "s",
        "lower",
        by_side(runs, lambda r: r["total_s"]),
    )
    total_row.note = f"upstream direct: {up_total:.2f} s"
    fetch_row = Row.of(
        "cold.fetches",
        "cold blob",
        "200 MiB, 1 client: upstream fetches",
        "GETs",
        "lower",
        by_side(runs, lambda r: float(r["upstream_blob_gets"])),
    )
    return [ttfb_row, total_row, fetch_row]


def check(result: CurlResult, image: BenchImage, who: str) -> None:
    """Raise unless `result` got the whole layer of `image`."""
    if not result.ok(image.layer_size):
        raise RuntimeError(
            f"{who}: GET {image.layer_digest}: status {result.status}, "
            f"{result.size} of {image.layer_size} bytes {result.error}"
        )


def cold_parallel(bench: Bench, side: Side, image: BenchImage, clients: int) -> dict[str, Any]:
    """`side` restarted empty, auth primed, then `clients` curls of the blob at once: wall
    time, each one's times, upstream GETs of the blob and the server's peak RSS."""
    side.restart_fresh()
    bench.prime_auth(side, image)
    bench.up.reset_counts()
    tree = ProcessTree(side.pid)
    tree.reset_peak_rss()
    results, wall = curl_parallel(side.url + image.blob_path, clients)
    rss, processes = tree.peak_rss()
    bad = [r for r in results if not r.ok(image.layer_size)]
    if bad:
        raise RuntimeError(f"{side.label}: {len(bad)} of {clients} cold transfers failed: {bad[0]}")
    fetches = bench.settled_blob_gets(image.layer_digest)
    return {
        "clients": clients,
        "wall_s": round(wall, 3),
        "ttfb_ms": sorted(round(r.ttfb_s * 1000, 1) for r in results),
        "total_s": sorted(round(r.total_s, 3) for r in results),
        "upstream_blob_gets": fetches,
        "peak_rss_MB": round(rss / MB, 1),
        "server_processes": processes,
    }


def cold_concurrent(bench: Bench) -> None:
    """`cold_clients` clients ask an empty mirror for the same 200 MiB blob at once:
    wall time until the last has it all, and upstream GETs of that blob."""
    image = bench.image("200m")
    clients = bench.options.cold_clients
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for rep in range(bench.options.repeat):
        for side in bench.order(rep):
            run = cold_parallel(bench, side, image, clients)
            runs[side.label].append(run)
            bench.log(
                f"    {side.label:>6} {clients} cold clients: {run['wall_s']:.2f} s, "
                f"upstream fetches {run['upstream_blob_gets']}, "
                f"peak RSS {run['peak_rss_MB']:.0f} MB"
            )
    bench.rows += _concurrent_rows(runs, clients)
    bench.raw["cold_concurrent"] = {"blob_bytes": image.layer_size, "runs": runs}


def _concurrent_rows(runs: dict[str, list[dict[str, Any]]], clients: int) -> list[Row]:
    label = f"200 MiB, {clients} clients at once"
    fetch_row = fetches_row("cold_concurrent.fetches", "cold blob, concurrent", label, runs)
    wall_row = Row.of(
        "cold_concurrent.wall",
        "cold blob, concurrent",
        f"{label}: time until all done",
        "s",
        "lower",
        by_side(runs, lambda r: r["wall_s"]),
    )
    return [wall_row, fetch_row]
