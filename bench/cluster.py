"""`python -m bench.cluster`: the mirror as a cluster against distribution's proxy, both on
the same SeaweedFS and behind the same nginx (deploy/nginx/mirror-cluster.conf).

    python -m bench.cluster                 # the full run (a few minutes)
    python -m bench.cluster --quick         # one repetition, fewer clients: a smoke test

Ours is three `mirror serve` replicas on one bucket and one Redis; theirs two
`docker-registry` proxies with its `s3` driver on the same bucket (another prefix). Figures:

- cold: the 200 MiB blob asked by `--clients` clients at once through the load balancer,
  every server restarted on an empty cache first, round robin and with the conf's digest
  affinity: upstream GETs of the blob and the time until the last client has it all;
- warm: `--warm-clients` clients at once on the cached blob: ours from S3 (each replica's
  local disk emptied first) and from its local hot cache, theirs from S3, and both on their
  filesystem store (one server each, behind its own nginx).

Everything listens on 127.0.0.1 and lives in a temporary directory; every process is stopped
at the end, also on Ctrl-C, SIGTERM, an error or the overall `--time-limit`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import machine, report
from bench.cli import OURS_DEFAULT_ENV
from bench.cluster_harness import ClusterHarness, Group, registry_version, weed_version
from bench.harness import MANIFEST_ACCEPT, PUSH_PASSWORD, PUSH_USER, BenchImage, fetch
from bench.load import CurlResult, curl_parallel
from bench.rows import MB, Row, by_side, fetches_row
from bench.session import settled_blob_gets
from testkit.upstream import RealUpstream

IMAGE = "200m"
WARM_TIMEOUT = 90.0


class TimeLimitExceeded(Exception):
    pass


@dataclass
class Run:
    """The state of one benchmark run: the processes, options, rows and raw numbers."""

    harness: ClusterHarness
    repeat: int
    clients: int
    warm_clients: int
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    sides: dict[str, object] = field(default_factory=dict)  # how each group was run

    @property
    def up(self) -> RealUpstream:
        assert self.harness.upstream is not None
        return self.harness.upstream

    @property
    def image(self) -> BenchImage:
        return self.harness.images[IMAGE]

    def group(self, name: str) -> Group:
        return self.harness.groups[name]

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        _log(f"  WARNING: {text}")


def _log(text: str) -> None:
    print(text, flush=True)


# --- helpers --------------------------------------------------------------------------------


def prime(group: Group, image: BenchImage) -> None:
    """Each server asked for the manifest by digest directly, the same for both sides: the
    upstream's challenge and token are in place on every one of them before a cold run."""
    for server in group.servers:
        status, *_ = fetch(
            server.url + image.manifest_path(image.manifest_digest), {"Accept": MANIFEST_ACCEPT}
        )
        if status != 200:
            raise RuntimeError(
                f"{group.label}: manifest answered {status}\n{server.stderr[-2000:]}"
            )


def cache(run: Run, group: Group) -> None:
    """Fetch the blob through each server of `group` until it answers from its cache (the
    upstream sees no GET of it), checking the bytes."""
    image = run.image
    for server in group.servers:
        deadline = time.monotonic() + WARM_TIMEOUT
        while True:
            run.up.reset_counts()
            status, _, size, digest = fetch(server.url + image.blob_path, timeout=WARM_TIMEOUT)
            if (status, size, digest) != (200, image.layer_size, image.layer_digest):
                raise RuntimeError(
                    f"{group.label}-{group.storage}: blob answered {status}, {size} bytes, "
                    f"{digest}\n{server.stderr[-2000:]}"
                )
            if run.up.blob_gets(image.layer_digest) == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{group.label}-{group.storage} does not cache the blob")
            time.sleep(0.5)


def all_at_once(run: Run, url: str, clients: int, who: str) -> tuple[list[CurlResult], float]:
    """`clients` curls of the blob at `url` at once; fails unless every one got all of it."""
    results, wall = curl_parallel(url + run.image.blob_path, clients)
    bad = [r for r in results if not r.ok(run.image.layer_size)]
    if bad:
        raise RuntimeError(f"{who}: {len(bad)} of {clients} transfers failed: {bad[0]}")
    return results, wall


# --- figures --------------------------------------------------------------------------------


def cold(run: Run, *, affinity: bool) -> None:
    """`clients` clients at once on the cold blob through the load balancer, every server of
    the side restarted on an empty cache first: upstream GETs and time until all done."""
    mode = "digest affinity" if affinity else "round robin"
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for rep in range(run.repeat):
        names = ("ours-s3", "theirs-s3") if rep % 2 == 0 else ("theirs-s3", "ours-s3")
        for name in names:
            group = run.group(name)
            group.restart_fresh()
            prime(group, run.image)
            run.up.reset_counts()
            results, wall = all_at_once(run, group.url(affinity=affinity), run.clients, name)
            fetches = settled_blob_gets(run.up, run.image.layer_digest)
            runs[group.label].append(
                {
                    "wall_s": round(wall, 3),
                    "upstream_blob_gets": fetches,
                    "ttfb_ms": sorted(round(r.ttfb_s * 1000, 1) for r in results),
                    "total_s": sorted(round(r.total_s, 3) for r in results),
                }
            )
            _log(f"    {name:>9} cold, {mode}: {wall:.2f} s, upstream fetches {fetches}")
    label = f"200 MiB, {run.clients} clients at once, {mode}"
    fetch_row = fetches_row(
        f"cluster.cold.{'affinity' if affinity else 'round_robin'}.fetches",
        "cluster cold blob",
        label,
        runs,
    )
    wall_row = Row.of(
        f"cluster.cold.{'affinity' if affinity else 'round_robin'}.wall",
        "cluster cold blob",
        f"{label}: time until all done",
        "s",
        "lower",
        by_side(runs, lambda r: r["wall_s"]),
    )
    run.rows += [fetch_row, wall_row]
    run.raw[f"cold_{'affinity' if affinity else 'round_robin'}"] = runs


def warm(run: Run) -> None:
    """`warm_clients` clients at once on the cached blob: aggregate MB/s, for ours from S3
    (local disks emptied first), then from its hot cache; theirs from S3; both on local
    disk."""
    size = run.image.layer_size
    clients = run.warm_clients
    cells: dict[str, list[float]] = {}
    for name in ("ours-s3", "theirs-s3", "ours-file", "theirs-file"):
        cache(run, run.group(name))
    for _rep in range(run.repeat):
        for name, local in (("ours-s3", True), ("theirs-s3", False), ("ours-file", False)):
            group = run.group(name)
            if local:
                group.restart_local()
                prime(group, run.image)
            cells.setdefault(name, []).append(_warm_cell(run, group, name, clients, size))
        ours = run.group("ours-s3")
        cells.setdefault("ours-hot", []).append(_warm_cell(run, ours, "ours-hot", clients, size))
        theirs = run.group("theirs-file")
        cells.setdefault("theirs-file", []).append(
            _warm_cell(run, theirs, "theirs-file", clients, size)
        )
    label = f"200 MiB, {clients} clients at once"

    def row(key: str, what: str, ours: str, theirs: str) -> Row:
        return Row.of(
            f"cluster.warm.{key}",
            "cluster warm blob",
            f"{label}: {what}",
            "MB/s",
            "higher",
            {"ours": cells[ours], "theirs": cells[theirs]},
        )

    s3 = row("s3", "from S3 (ours: local disks emptied first)", "ours-s3", "theirs-s3")
    hot = row("hot", "ours from its local hot cache, theirs from S3", "ours-hot", "theirs-s3")
    disk = row("file", "filesystem store, one server", "ours-file", "theirs-file")
    run.rows += [s3, hot, disk]
    run.raw["warm"] = {"clients": clients, "blob_bytes": size, "MB_per_s": cells}


def _warm_cell(run: Run, group: Group, name: str, clients: int, size: int) -> float:
    run.up.reset_counts()
    _, wall = all_at_once(run, group.url(), clients, name)
    rate = clients * size / MB / wall
    gets = run.up.blob_gets(run.image.layer_digest)
    if gets:
        run.warn(f"{name}: {gets} upstream blob GETs in a warm run")
    _log(f"    {name:>11} warm: {rate:8.1f} MB/s ({wall:.2f} s)")
    return round(rate, 1)


# --- the run --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster",
        description="Benchmark three mirror replicas on SeaweedFS and Redis against two "
        "distribution proxies on the same SeaweedFS, both behind nginx.",
    )
    parser.add_argument("--quick", action="store_true", help="1 repetition, 9 cold clients")
    parser.add_argument("--repeat", type=int, metavar="N", help="repetitions (default 2)")
    parser.add_argument(
        "--clients", type=int, metavar="N", help="cold clients at once (default 30: 3 x 10)"
    )
    parser.add_argument(
        "--warm-clients", type=int, default=8, metavar="N", help="warm clients at once (8)"
    )
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="environment of every replica on top of the main benchmark's (repeatable)",
    )
    parser.add_argument(
        "--results-dir", type=Path, default=report.RESULTS_DIR, help="where results go"
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and caches")
    parser.add_argument(
        "--time-limit", type=float, default=900, metavar="S", help="stop after S seconds (900)"
    )
    return parser


def _raise(exc: type[BaseException]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise exc()

    return handler


def _commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def _take(run: Run) -> None:
    harness = run.harness
    _log(f"bench.cluster: work directory {harness.workdir}; seeding {IMAGE}, starting everything")
    harness.start([IMAGE], (PUSH_USER, PUSH_PASSWORD))
    run.sides = {name: group.describe() for name, group in harness.groups.items()}
    for affinity in (False, True):
        _log(f"== cold, {'digest affinity' if affinity else 'round robin'}")
        cold(run, affinity=affinity)
    _log("== warm")
    warm(run)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    ours_env = dict(OURS_DEFAULT_ENV)
    for pair in args.ours_env:
        key, _, value = pair.partition("=")
        ours_env[key] = value
    workdir = Path(tempfile.mkdtemp(prefix="mirror-bench-cluster-"))
    run = Run(
        ClusterHarness(workdir, ours_env),
        repeat=args.repeat or (1 if args.quick else 2),
        clients=args.clients or (9 if args.quick else 30),
        warm_clients=args.warm_clients,
    )
    started = datetime.datetime.now(datetime.UTC)
    clock = time.monotonic()
    signal.signal(signal.SIGTERM, _raise(KeyboardInterrupt))
    signal.signal(signal.SIGALRM, _raise(TimeLimitExceeded))
    signal.setitimer(signal.ITIMER_REAL, args.time_limit)
    error = ""
    try:
        _take(run)
    except KeyboardInterrupt:
        print("\nbench.cluster: interrupted; stopping everything")
        error = "interrupted"
    except TimeLimitExceeded:
        error = f"time limit of {args.time_limit:g} s exceeded"
        print(f"\nbench.cluster: {error}; stopping everything")
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        print(f"\nbench.cluster: failed: {error}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        run.harness.close()
        if args.keep_workdir or error:
            print(f"bench.cluster: work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if error:
        return 1
    record = {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - clock, 1),
            "command": " ".join(["python", "-m", "bench.cluster", *(argv or sys.argv[1:])]),
            "commit": _commit(),
            "machine": machine.facts(),
            "seaweedfs": weed_version(),
            "distribution": registry_version(),
            "repeat": run.repeat,
            "sides": run.sides,
            "warnings": run.warnings,
            "units": "MB = 10^6 bytes",
        },
        "rows": [row.to_json() for row in run.rows],
        "raw": run.raw,
    }
    print()
    print(report.table(run.rows))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{started.strftime('%Y%m%dT%H%M%SZ')}-cluster.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    shutil.copyfile(path, args.results_dir / "cluster-latest.json")
    print(f"wrote {path} and cluster-latest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
