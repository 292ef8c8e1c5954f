"""Cold pulls of the 200 MiB blob, each side restarted with an empty cache first: one client
(time to first byte and total time), and many clients at once (time until the last is done,
and how often the upstream was asked for the blob); both next to the same fetches straight
from the upstream (with a token fetched beforehand), what a client would see without a
mirror.

Targets (issue 17): one client's total time at most distribution's and at most 1.5 times the
upstream's, its time to first byte at most the upstream's + 10 ms; many clients at once done
sooner than through distribution, with one upstream fetch."""

from __future__ import annotations

from typing import Any

from bench.harness import BenchImage, ProcessTree, Side
from bench.load import CurlResult, curl, curl_parallel
from bench.rows import MB, Row, by_side, fetches_row
from bench.session import Bench

UPSTREAM = "upstream"  # the peer that is the upstream itself, fetched from directly
UPSTREAM_SAMPLES = 5  # direct upstream GETs per repetition of the cold figure
TTFB_SLACK_MS = 10.0  # over the upstream's own time to first byte
UPSTREAM_TIMES = 1.5  # times the upstream's total time a cold pull may take


def cold(bench: Bench) -> None:
    """One client, 200 MiB blob, empty cache (each side restarted with fresh storage
    before every run; auth primed the same way for all): time to first byte and total
    time, next to the upstream's own for the same blob."""
    image = bench.image("200m")
    upstream_runs: list[CurlResult] = []
    runs: dict[str, list[dict[str, Any]]] = {side.label: [] for side in bench.harness.sides}
    for rep in range(bench.options.cold_repeat):
        upstream_runs += _upstream_direct(bench, image, _auth(bench, image))
        for side in bench.order(rep):
            runs[side.label].append(_cold_run(bench, side, image))
    runs[UPSTREAM] = [r.__dict__ for r in upstream_runs]
    bench.rows += _cold_rows(runs)
    bench.raw["cold"] = {
        "blob_bytes": image.layer_size,
        "auth": "primed before every run: one manifest GET by digest through the side; "
        "upstream direct: with a token fetched beforehand",
        "runs": runs,
    }


def _auth(bench: Bench, image: BenchImage) -> dict[str, str]:
    """A fresh pull token for `image` as a header (tokens live 5 minutes)."""
    token = bench.harness.token.token(f"repository:{image.repo}:pull")
    return {"Authorization": f"Bearer {token}"}


def _upstream_direct(bench: Bench, image: BenchImage, auth: dict[str, str]) -> list[CurlResult]:
    """The blob straight from the upstream, `UPSTREAM_SAMPLES` times: its own time to first
    byte varies by several ms from one request to the next, and it is cheap to sample more
    often than the mirrors."""
    samples: list[CurlResult] = []
    for _ in range(UPSTREAM_SAMPLES):
        result = curl(bench.up.url + image.blob_path, auth)
        check(result, image, UPSTREAM)
        samples.append(result)
    bench.log(
        "    upstream direct: TTFB "
        + ", ".join(f"{r.ttfb_s * 1000:.1f}" for r in samples)
        + " ms; total "
        + ", ".join(f"{r.total_s:.2f}" for r in samples)
        + " s"
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
        f"    {side.label:>12} cold: TTFB {result.ttfb_s * 1000:.1f} ms, "
        f"total {result.total_s:.2f} s, upstream fetches {fetches}"
    )
    return {**result.__dict__, "upstream_blob_gets": fetches}


def _cold_rows(runs: dict[str, list[dict[str, Any]]]) -> list[Row]:
    label = "200 MiB, 1 client"
    ttfb_row = Row.of(
        "cold.ttfb",
        "cold blob",
        f"{label}: time to first byte",
        "ms",
        "lower",
        by_side(runs, lambda r: r["ttfb_s"] * 1000),
    )
    ttfb_row.at_most(UPSTREAM, plus=TTFB_SLACK_MS)
    total_row = Row.of(
        "cold.total",
        "cold blob",
        f"{label}: total time",
        "s",
        "lower",
        by_side(runs, lambda r: r["total_s"]),
    )
    total_row.at_most("distribution")
    total_row.at_most(UPSTREAM, UPSTREAM_TIMES)
    mirrors = {side: side_runs for side, side_runs in runs.items() if side != UPSTREAM}
    fetch_row = Row.of(
        "cold.fetches",
        "cold blob",
        f"{label}: upstream fetches",
        "GETs",
        "lower",
        by_side(mirrors, lambda r: float(r["upstream_blob_gets"])),
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
    """`cold_clients` clients ask an empty side for the same 200 MiB blob at once: wall
    time until the last has it all, and upstream GETs of that blob; and as many clients
    straight from the upstream."""
    image = bench.image("200m")
    clients = bench.options.cold_clients
    runs: dict[str, list[dict[str, Any]]] = {side.label: [] for side in bench.harness.sides}
    runs[UPSTREAM] = []
    for rep in range(bench.options.repeat):
        runs[UPSTREAM].append(_upstream_parallel(bench, image, clients))
        for side in bench.order(rep):
            run = cold_parallel(bench, side, image, clients)
            runs[side.label].append(run)
            bench.log(
                f"    {side.label:>12} {clients} cold clients: {run['wall_s']:.2f} s, "
                f"upstream fetches {run['upstream_blob_gets']}, "
                f"peak RSS {run['peak_rss_MB']:.0f} MB"
            )
    bench.rows += _concurrent_rows(runs, clients)
    bench.raw["cold_concurrent"] = {"blob_bytes": image.layer_size, "runs": runs}


def _upstream_parallel(bench: Bench, image: BenchImage, clients: int) -> dict[str, Any]:
    """`clients` curls at once straight from the upstream, each with the token."""
    bench.up.reset_counts()
    results, wall = curl_parallel(bench.up.url + image.blob_path, clients, _auth(bench, image))
    bad = [r for r in results if not r.ok(image.layer_size)]
    if bad:
        raise RuntimeError(f"upstream: {len(bad)} of {clients} direct transfers failed: {bad[0]}")
    fetches = bench.up.blob_gets(image.layer_digest)
    bench.log(f"    {UPSTREAM:>12} {clients} direct clients: {wall:.2f} s")
    return {
        "clients": clients,
        "wall_s": round(wall, 3),
        "ttfb_ms": sorted(round(r.ttfb_s * 1000, 1) for r in results),
        "total_s": sorted(round(r.total_s, 3) for r in results),
        "upstream_blob_gets": fetches,
    }


def _concurrent_rows(runs: dict[str, list[dict[str, Any]]], clients: int) -> list[Row]:
    label = f"200 MiB, {clients} clients at once"
    fetch_row = fetches_row("cold_concurrent.fetches", "cold blob", label, runs)
    wall_row = Row.of(
        "cold_concurrent.wall",
        "cold blob",
        f"{label}: time until all done",
        "s",
        "lower",
        by_side(runs, lambda r: r["wall_s"]),
    )
    wall_row.at_most("distribution", strictly=True)
    return [wall_row, fetch_row]
