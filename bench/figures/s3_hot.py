"""Warm blobs from S3 storage through the local hot cache, against ours on the filesystem
store (issue 17: they match after the first read).

A second `mirror serve` stores in a SeaweedFS bucket (`weed mini`, `testkit.seaweed`) with
its metadata in a Redis (as a mirror on S3 must). It pulls the 200 MiB blob through once,
is restarted with an empty data dir (the blob is then in the bucket only), reads it once
from the bucket (which fills its hot cache; that read is timed too), and then serves the
warm wrk runs with 1 and 32 clients, rotating with ours on the filesystem. Target: at least
0.95 times the filesystem store's throughput.
"""

from __future__ import annotations

import contextlib
from typing import Any

from bench.figures.warm_blobs import SHAPES, mb_per_s
from bench.figures.wrk_driver import WrkLoad, describe, run_load, runs_json
from bench.harness import BenchImage, OursMirror, Side
from bench.load import WrkResult, curl
from bench.rows import MB, OURS, Row, by_side
from bench.session import Bench
from testkit.redis import RedisProcess
from testkit.seaweed import SeaweedFS

IMAGE = "200m"
BUCKET = "bench"
ON_S3 = "ours-s3"  # the label of the mirror on S3 while it runs
ON_FILE = "ours on file"  # the peer in the rows: ours on the filesystem store
FILE_SHARE = 0.95  # of the filesystem store's throughput ours on S3 must reach


def s3_hot(bench: Bench) -> None:
    """Ours on S3 against ours on the filesystem, warm 200 MiB blob, 1 and 32 clients."""
    image = bench.image(IMAGE)
    directory = bench.workdir / "s3"
    directory.mkdir(parents=True, exist_ok=True)
    bench.log("  starting SeaweedFS (weed mini) and Redis")
    with contextlib.ExitStack() as running:
        store = running.enter_context(SeaweedFS(directory, bucket=BUCKET))
        redis = running.enter_context(RedisProcess(bench.workdir / "redis"))
        on_s3 = bench.harness.start_ours(
            "ours-s3",
            env=store.env(),
            args=("--storage", f"s3://{BUCKET}/ours", "--redis-url", redis.redis_url),
            label=ON_S3,
        )
        running.callback(on_s3.stop)
        first = _first_read(bench, on_s3, image)
        cells = [_cell(bench, on_s3, image, *shape) for shape in SHAPES]
    bench.raw["s3"] = {
        "storage": f"SeaweedFS (weed mini) bucket {BUCKET}, prefix ours; metadata in Redis",
        "first_read_from_bucket": first,
        "cells": cells,
    }


def _first_read(bench: Bench, on_s3: OursMirror, image: BenchImage) -> dict[str, Any]:
    """Pull the blob through into the bucket, restart with an empty data dir, read it once
    from the bucket (which must not ask the upstream): that read's figures."""
    bench.warm_image(on_s3, image)
    on_s3.restart_fresh()  # a new data dir; the bucket keeps the blob
    bench.up.reset_counts()
    result = curl(on_s3.url + image.blob_path)
    if not result.ok(image.layer_size):
        raise RuntimeError(f"{ON_S3}: first read from the bucket failed: {result}")
    fetched = bench.up.blob_gets(image.layer_digest)
    if fetched:
        raise RuntimeError(f"{ON_S3} fetched the blob from the upstream, not from the bucket")
    rate = image.layer_size / MB / result.total_s
    bench.log(
        f"    {ON_S3:>12} first read from the bucket: {result.total_s:.2f} s "
        f"({rate:.0f} MB/s), TTFB {result.ttfb_s * 1000:.1f} ms"
    )
    row = Row(
        "s3.first_read",
        "warm blob from S3",
        f"{IMAGE[:-1]} MiB, 1 client, first read (empty data dir)",
        "MB/s",
        "higher",
        {OURS: round(rate, 1)},
    )
    bench.rows.append(row)
    return {**result.__dict__, "MB_per_s": round(rate, 1)}


def _cell(
    bench: Bench, on_s3: OursMirror, image: BenchImage, connections: int, threads: int
) -> dict[str, Any]:
    """One number of clients: ours on S3 (hot cache) and on the filesystem, its row."""
    ours = bench.harness.ours
    assert ours is not None
    bench.warm_image(ours, image)
    label = f"{IMAGE[:-1]} MiB, {connections} client{'s' * (connections > 1)}"
    bench.log(f"  warm blob from S3 (hot cache): {label}")

    def observe(side: Side, result: WrkResult) -> None:
        bench.log(describe(result, f"{mb_per_s(result):9.1f} MB/s"))
        ups = result.extra["upstream_requests"]
        if ups["blob_get"]:
            bench.warn(f"{side.label}: {ups['blob_get']} upstream blob GETs in a warm run")

    load = WrkLoad(image.blob_path, connections, threads, headers={}, timeout=60)
    runs = run_load(bench, load, observe, sides=(on_s3, ours))
    row = Row.of(
        f"s3.{IMAGE}.c{connections}",
        "warm blob from S3",
        f"{label}, hot cache",
        "MB/s",
        "higher",
        by_side({OURS: runs[ON_S3], ON_FILE: runs[OURS]}, mb_per_s),
    )
    row.at_least(ON_FILE, FILE_SHARE)
    bench.rows.append(row)
    return {
        "connections": connections,
        "threads": threads,
        "runs": runs_json({ON_S3: runs[ON_S3], ON_FILE: runs[OURS]}),
    }
