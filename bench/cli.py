"""`python -m bench`: start everything, warm every side, take the figures, report.

    python -m bench                       # the full run (a few minutes)
    python -m bench --quick               # one repetition, short runs: a smoke test
    python -m bench --only manifest --only blob --duration 8
    python -m bench --ours-env MIRROR_WORKERS=2 --ours-arg --offline

Everything listens on 127.0.0.1 and lives in a temporary directory; every process is stopped
at the end, also on Ctrl-C, SIGTERM, an error or the overall `--time-limit`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench import machine, report
from bench.figures import FIGURES, NAMES, Figure
from bench.harness import Harness
from bench.rows import Row
from bench.session import Bench, Options

# Ours runs with its defaults (workers included) but for these: tags fresh for an hour (as
# long as nginx keeps anything it cached, so a warm figure is a cache's for both), warnings
# only (nginx and distribution run without an access log), and no per-client cold-miss
# limit (the load comes from one address, and the limit would refuse most of it).
OURS_DEFAULT_ENV = {
    "MIRROR_TAG_TTL": "3600",
    "MIRROR_LOG_LEVEL": "warning",
    "MIRROR_MAX_COLD_PER_CLIENT": "0",
}


class TimeLimitExceeded(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the mirror against the Go distribution registry in proxy mode "
        "and nginx with proxy_cache, all in front of the same real upstream (distribution "
        "with token auth).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 repetition, 2 s wrk runs, no warm-up runs",
    )
    parser.add_argument(
        "--duration", type=int, metavar="S", help="seconds per wrk run (default 4; quick 2)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="repetitions per figure (default 3, and 5 for the single-client cold runs; quick 1)",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="FIGURE",
        help=f"only these figures (repeatable or comma-separated): {', '.join(NAMES)}",
    )
    parser.add_argument(
        "--ours-env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="environment of our mirror on top of "
        + " ".join(f"{k}={v}" for k, v in OURS_DEFAULT_ENV.items())
        + " (repeatable)",
    )
    parser.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument to `mirror serve` (repeatable; use --ours-arg=--flag)",
    )
    parser.add_argument(
        "--cold-clients", type=int, default=20, metavar="N", help="cold concurrent clients (20)"
    )
    parser.add_argument(
        "--pulls", type=int, default=100, metavar="N", help="pulls in the revalidation figure"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=report.RESULTS_DIR, help="where results go"
    )
    parser.add_argument(
        "--workdir", type=Path, help="work directory (default: a new one under $TMPDIR)"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the work directory (logs, caches)"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="run nothing: print the table of a results file and redraw its PNG beside it",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1200,
        metavar="S",
        help="stop everything after this many seconds (default 1200)",
    )
    return parser


def _env_pairs(pairs: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--ours-env expects KEY=VAL, got {pair!r}")
        env[key] = value
    return env


def _figures(only: Sequence[str] | None, parser: argparse.ArgumentParser) -> list[Figure]:
    if not only:
        return list(FIGURES)
    wanted = {name.strip() for item in only for name in item.split(",") if name.strip()}
    unknown = wanted - set(NAMES)
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {NAMES}")
    return [figure for figure in FIGURES if figure.name in wanted]


def _names(figures: Sequence[Figure]) -> list[str]:
    return [figure.name for figure in figures]


def _command(argv: Sequence[str]) -> str:
    return os.environ.get("BENCH_COMMAND") or shlex.join(["python", "-m", "bench", *argv])


def _raise(exc: type[BaseException]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise exc()

    return handler


def _log(text: str) -> None:
    print(text, flush=True)


def _cleanup(workdir: Path, keep: bool, failed: bool) -> None:
    if keep:
        print(f"bench: work directory kept: {workdir}")
        return
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    # Keep the logs for a post-mortem, not the hundreds of MB of blobs.
    for pattern in (
        "upstream/storage",
        "distribution/storage-*",
        "nginx/cache-*",
        "*/data-*",
        "s3/data",
        "layouts",
    ):
        for path in workdir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    print(f"bench: logs kept in {workdir}")


def _replot(path: Path) -> int:
    record = json.loads(path.read_text())
    rows = [Row.from_json(data) for data in record["rows"]]
    print(report.table(rows))
    passed, judged = report.targets_summary(rows)
    print(f"\ntargets met: {passed} of {judged}")
    png = path.with_suffix(".png")
    report.chart(record, rows, png)
    print(f"wrote {png}")
    return 0


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    options = Options(
        duration=args.duration or (2 if args.quick else 4),
        repeat=args.repeat or (1 if args.quick else 3),
        cold_repeat=args.repeat or (1 if args.quick else 5),
        warmup=0 if args.quick else 1,
        cold_clients=args.cold_clients,
        pulls=args.pulls,
    )
    if options.duration < 1 or options.repeat < 1:
        parser.error("--duration and --repeat must be at least 1")
    return options


def _require_tools(parser: argparse.ArgumentParser) -> None:
    for tool in ("wrk", "curl", "skopeo", "docker-registry", "nginx"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (scripts/bench installs it)")


def _take(bench: Bench, figures: Sequence[Figure]) -> dict[str, str]:
    """Start the processes, warm every side, take every figure; the tracebacks of the
    figures that failed, by name (a failed figure does not stop the run)."""
    harness = bench.harness
    image_keys = sorted({key for figure in figures for key in figure.images})
    _log(f"bench: work directory {bench.workdir}; figures: {', '.join(_names(figures))}")
    _log(f"bench: starting the token server and upstream, seeding {', '.join(image_keys)}")
    harness.start(image_keys)
    _log(
        f"bench: seeded in {harness.seed_seconds:.1f} s; "
        + " ".join(f"{side.label} {side.url}" for side in harness.sides)
        + f" upstream {bench.up.url}"
    )
    warm_keys = tuple(sorted({k for figure in figures if figure.warm for k in figure.images}))
    if warm_keys:
        _log(f"bench: warming every side with {', '.join(warm_keys)}")
        bench.warm(warm_keys)
    errors: dict[str, str] = {}
    for figure in figures:
        _log(f"== {figure.name}")
        started = time.monotonic()
        try:
            figure.take(bench)
        except (KeyboardInterrupt, TimeLimitExceeded):
            raise
        except Exception as exc:
            errors[figure.name] = "".join(traceback.format_exception(exc))
            bench.warn(f"figure {figure.name} failed: {exc}")
            # A side that died takes the later figures with it unless restarted.
            for side in harness.sides:
                if not side.running:
                    side.restart_fresh()
                    if warm_keys:
                        bench.warm(warm_keys)
        bench.figure_seconds[figure.name] = round(time.monotonic() - started, 1)
        _log(f"   ({figure.name}: {bench.figure_seconds[figure.name]:.0f} s)")
    return errors


@dataclass
class _Outcome:
    errors: dict[str, str] = field(default_factory=dict)  # figure name -> traceback
    sides: dict[str, Any] = field(default_factory=dict)  # how each side was run
    status: int | None = None  # the exit status when the run was cut short


def _run(bench: Bench, figures: Sequence[Figure], args: argparse.Namespace) -> _Outcome:
    """`_take` within `--time-limit`, SIGTERM taken as Ctrl-C; whatever happens, every
    process is stopped and the work directory cleaned up."""
    outcome = _Outcome()
    signal.signal(signal.SIGTERM, _raise(KeyboardInterrupt))
    signal.signal(signal.SIGALRM, _raise(TimeLimitExceeded))
    signal.setitimer(signal.ITIMER_REAL, args.time_limit)
    failed = True
    try:
        outcome.errors = _take(bench, figures)
        failed = bool(outcome.errors)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything")
        outcome.status = 130
    except TimeLimitExceeded:
        print(f"\nbench: time limit of {args.time_limit:g} s exceeded; stopping everything")
        outcome.status = 124
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        harness = bench.harness
        if harness.nginx is not None:  # all sides started
            outcome.sides = {side.label: side.describe() for side in harness.sides}
        harness.close()
        _cleanup(bench.workdir, args.keep_workdir, failed)
    return outcome


def _record(
    bench: Bench,
    args: argparse.Namespace,
    argv: Sequence[str],
    figures: Sequence[Figure],
    outcome: _Outcome,
    started: datetime.datetime,
    clock: float,
) -> dict[str, Any]:
    """The JSON record of the run (its format is what the README describes)."""
    finished = datetime.datetime.now(datetime.UTC)
    harness = bench.harness
    return {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": finished.isoformat(timespec="seconds"),
            "elapsed_s": round(time.monotonic() - clock, 1),
            "figure_seconds": bench.figure_seconds,
            "command": _command(argv),
            "figures": _names(figures),
            "options": bench.options.__dict__,
            "quick": args.quick,
            "machine": machine.facts(),
            **outcome.sides,
            "upstream": {
                "what": "docker-registry (distribution) with token auth through the "
                "integration suite's JWT token server; access log on (used for counting)",
                "seed_seconds": round(harness.seed_seconds, 1),
            },
            "images": {k: v.__dict__ for k, v in harness.images.items()},
            "units": "MB = 10^6 bytes (wrk's own Transfer/sec uses 2^20); latency in ms",
            "warnings": bench.warnings,
            "errors": outcome.errors,
        },
        "rows": [row.to_json() for row in bench.rows],
        "raw": bench.raw,
    }


def _report(bench: Bench, record: dict[str, Any], stamp: str, results_dir: Path) -> None:
    print()
    print(report.table(bench.rows))
    passed, judged = report.targets_summary(bench.rows)
    print(f"\ntargets met: {passed} of {judged}")
    if bench.warnings:
        print("warnings:\n  " + "\n  ".join(bench.warnings))
    for path in report.write(record, bench.rows, stamp, results_dir):
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.replot:
        return _replot(args.replot)
    figures = _figures(args.only, parser)
    ours_env = OURS_DEFAULT_ENV | _env_pairs(args.ours_env, parser)
    options = _options(args, parser)
    _require_tools(parser)

    started = datetime.datetime.now(datetime.UTC)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    harness = Harness(workdir, ours_env=ours_env, ours_args=args.ours_arg)
    bench = Bench(harness, options, workdir, log=_log)
    clock = time.monotonic()
    outcome = _run(bench, figures, args)
    if outcome.status is not None:
        return outcome.status
    record = _record(bench, args, argv, figures, outcome, started, clock)
    _report(bench, record, started.strftime("%Y%m%dT%H%M%SZ"), args.results_dir)
    return 1 if outcome.errors else 0
