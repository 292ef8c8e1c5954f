"""Peak RSS: VmHWM (reset before the run; summed over the mirror's process tree, parent and
workers) with 32 clients on the 200 MiB blob, cold (all at once on an empty cache) and warm
(the blob figure's 32-client wrk runs, or one such run here)."""

from __future__ import annotations

from typing import Any

from bench.figures.cold_pulls import cold_parallel
from bench.figures.wrk_driver import WrkLoad, describe, wrk_run
from bench.harness import BenchImage
from bench.rows import Row
from bench.session import Bench

RSS_TARGET_MB = 250.0


def rss(bench: Bench) -> None:
    """Peak RSS (VmHWM, reset before the run; summed over the process tree) with
    `rss_clients` clients on the 200 MiB blob: cold (all at once on an empty cache), and
    warm (the wrk runs of the blob figure, or one such run here)."""
    image = bench.image("200m")
    clients = bench.options.rss_clients
    cold = _cold_peaks(bench, image, clients)
    warm_source = "the warm 32-client 200 MiB runs of the blob figure"
    if not bench.warm_rss:
        warm_source = "one warm 32-client 200 MiB wrk run"
        _warm_peaks(bench, image, clients)
    cold_mb = {s: run["peak_rss_MB"] for s, run in cold.items()}
    warm_mb = {s: max(v) for s, v in bench.warm_rss.items()}
    processes = cold["ours"]["server_processes"]
    for key, label, values in (
        ("rss.cold", f"{clients} clients, cold 200 MiB", cold_mb),
        ("rss.warm", f"{clients} clients, warm 200 MiB", warm_mb),
    ):
        row = Row(key, "peak RSS", label, "MB", "lower", dict(values))
        row.require(
            f"ours ≤ {RSS_TARGET_MB:g} MB", row.ours is not None and row.ours <= RSS_TARGET_MB
        )
        if processes > 1:
            row.note = f"ours: VmHWM summed over its {processes} processes"
        bench.rows.append(row)
    bench.raw["rss"] = {
        "method": "VmHWM from /proc/<pid>/status after `echo 5 > /proc/<pid>/clear_refs`, "
        "summed over the mirror's process tree",
        "ours_processes": processes,
        "cold": cold,
        "warm_MB": bench.warm_rss,
        "warm_source": warm_source,
    }


def _cold_peaks(bench: Bench, image: BenchImage, clients: int) -> dict[str, dict[str, Any]]:
    """Each side restarted empty, `clients` cold transfers at once: the runs, by side."""
    cold: dict[str, dict[str, Any]] = {}
    for side in bench.order(0):
        cold[side.label] = run = cold_parallel(bench, side, image, clients)
        bench.log(
            f"    {side.label:>12} {clients} cold clients: peak RSS {run['peak_rss_MB']:.0f} MB "
            f"({run['server_processes']} process(es)), {run['wall_s']:.2f} s, "
            f"upstream fetches {run['upstream_blob_gets']}"
        )
    return cold


def _warm_peaks(bench: Bench, image: BenchImage, clients: int) -> None:
    """When the blob figure did not run: one warm `clients`-client wrk run per side, its
    peak RSS into `bench.warm_rss`."""
    load = WrkLoad(image.blob_path, connections=clients, threads=2, headers={}, timeout=60)
    for side in bench.order(0):
        bench.warm_image(side, image)
        result = wrk_run(bench, side, load)
        bench.warm_rss.setdefault(side.label, []).append(result.extra["peak_rss_MB"])
        bench.log(describe(result, f"peak RSS {result.extra['peak_rss_MB']:.0f} MB"))
