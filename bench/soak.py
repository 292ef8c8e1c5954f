"""`python -m bench.soak`: a bounded load test. Many concurrent clients, for a fixed time,
against one `mirror serve` process in front of the fake Docker Hub (testkit/fakeupstream, in
a process of its own), with a mix of warm and cold manifests and blobs. Every answer is
checked (status, bytes, digest); the mirror's memory is sampled throughout.

    python -m bench.soak                                 # 500 clients for 60 s, 1 worker
    python -m bench.soak --clients 100 --duration 3      # a smoke test (tests run this)
    python -m bench.soak --workers 2 --json soak.json

It prints requests, errors, latency percentiles per kind of request, throughput and the
mirror's resident memory (its process and any workers: after the warm-up, the peak of the
sampled sum, at the end, and the sum of the kernel's high-water marks), and exits 1 on any
error, on a peak above `--max-rss-mb`, or on a traceback in the mirror's log.

The mix (weights per request a client makes next; a cold image is three requests):

    manifest-tag     GET a warm tag (fresh tag record: no upstream request)
    manifest-digest  GET a warm manifest by digest
    head-tag         HEAD a warm tag (what Docker sends first)
    blob-4k / blob-64k / blob-1m   GET a warm blob of that size
    cold-image       a never-pulled image: GET its tag, then its config and layer blobs,
                     so the mirror resolves, fetches, verifies and stores all three

Every client is one keep-alive connection; clients start spread over `--ramp` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import ProcessTree
from bench.soak_upstream import COLD_REPO, WARM_REPO, WARM_TAG, Content, UpstreamProcess
from testkit.mirrorproc import MirrorProcess

MB = 1_000_000
ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
WARM_BLOBS = ("blob-4k", "blob-64k", "blob-1m", "config")
MIX: tuple[tuple[str, int], ...] = (
    ("manifest-tag", 30),
    ("manifest-digest", 20),
    ("head-tag", 10),
    ("blob-4k", 14),
    ("blob-64k", 12),
    ("blob-1m", 8),
    ("cold-image", 6),
)
REQUEST_TIMEOUT = 30.0
RSS_SAMPLE_SECONDS = 0.25
ERROR_EXAMPLES = 20


# --- results -----------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # kind -> seconds
    bytes: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    cold_pulled: int = 0
    cold_exhausted: int = 0  # cold images wanted after the pool ran out (pulled warm)

    def ok(self, kind: str, seconds: float, size: int) -> None:
        self.latencies.setdefault(kind, []).append(seconds)
        self.bytes += size

    def error(self, kind: str, what: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < ERROR_EXAMPLES:
            self.examples.append(f"{kind}: {what}")

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class RssSampler:
    """Samples the resident memory of the mirror's processes (summed) until stopped."""

    def __init__(self, pid: int) -> None:
        self.tree = ProcessTree(pid)
        self.samples: list[tuple[float, int]] = []

    def now(self) -> int:
        total = 0
        for pid in self.tree.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    async def run(self, started: float) -> None:
        while True:
            self.samples.append((time.monotonic() - started, self.now()))
            await asyncio.sleep(RSS_SAMPLE_SECONDS)


# --- the clients ---------------------------------------------------------------------------


class Clients:
    def __init__(self, base: str, content: Content, stats: Stats) -> None:
        self.base = base
        self.content = content
        self.stats = stats
        self._next_cold = 0

    async def get(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        path: str,
        expected: bytes,
        digest: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> None:
        started = time.perf_counter()
        try:
            async with session.request(method, self.base + path, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    self.stats.error(kind, f"HTTP {resp.status} {body[:200]!r}")
                    return
                if resp.headers.get("Docker-Content-Digest") != digest:
                    self.stats.error(
                        kind, f"digest header {resp.headers.get('Docker-Content-Digest')}"
                    )
                    return
                if method == "HEAD":
                    if resp.content_length != len(expected):
                        self.stats.error(kind, f"HEAD length {resp.content_length}")
                        return
                elif body != expected or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                    self.stats.error(kind, f"wrong body ({len(body)} bytes)")
                    return
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.stats.error(kind, f"{type(exc).__name__}: {exc}")
            return
        self.stats.ok(kind, time.perf_counter() - started, len(body))

    async def one(self, session: aiohttp.ClientSession, kind: str) -> None:
        warm = self.content.warm
        accept = {"Accept": ACCEPT}
        if kind == "cold-image":
            if self._next_cold >= len(self.content.cold):
                self.stats.cold_exhausted += 1
                kind = "manifest-tag"
            else:
                index = self._next_cold
                self._next_cold += 1
                image = self.content.cold[index]
                path = f"/v2/{COLD_REPO}/manifests/c{index}"
                await self.get(
                    session, "cold-manifest", path, image.data, image.digest, headers=accept
                )
                for blob in image.blobs:
                    path = f"/v2/{COLD_REPO}/blobs/{blob.digest}"
                    await self.get(session, "cold-blob", path, blob.data, blob.digest)
                self.stats.cold_pulled += 1
                return
        if kind == "manifest-tag":
            path = f"/v2/{WARM_REPO}/manifests/{WARM_TAG}"
            await self.get(session, kind, path, warm.data, warm.digest, headers=accept)
        elif kind == "head-tag":
            path = f"/v2/{WARM_REPO}/manifests/{WARM_TAG}"
            await self.get(
                session, kind, path, warm.data, warm.digest, method="HEAD", headers=accept
            )
        elif kind == "manifest-digest":
            path = f"/v2/{WARM_REPO}/manifests/{warm.digest}"
            await self.get(session, kind, path, warm.data, warm.digest, headers=accept)
        else:
            blob = self.content.blobs[kind]
            path = f"/v2/{WARM_REPO}/blobs/{blob.digest}"
            await self.get(session, kind, path, blob.data, blob.digest)

    async def client(
        self, session: aiohttp.ClientSession, number: int, start_at: float, deadline: float
    ) -> None:
        rng = random.Random(number)
        kinds = [kind for kind, _ in MIX]
        weights = [weight for _, weight in MIX]
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        while time.monotonic() < deadline:
            await self.one(session, rng.choices(kinds, weights)[0])


async def warm_up(clients: Clients, session: aiohttp.ClientSession) -> None:
    """Pull the warm image once, so its manifests and blobs are cached before the clock."""
    for kind in ("manifest-tag", "manifest-digest", "blob-4k", "blob-64k", "blob-1m"):
        await clients.one(session, kind)
    config = clients.content.warm.config
    await clients.get(
        session, "warm-up", f"/v2/{WARM_REPO}/blobs/{config.digest}", config.data, config.digest
    )
    if clients.stats.errors:
        raise SystemExit(f"the warm-up failed: {clients.stats.examples}")
    clients.stats.latencies.clear()
    clients.stats.bytes = 0


# --- the run -------------------------------------------------------------------------------


@dataclass
class Options:
    clients: int
    duration: float
    workers: int
    ramp: float
    cold_images: int
    max_rss_mb: float


async def soak(
    options: Options, content: Content, upstream_url: str, workdir: Path
) -> dict[str, Any]:
    stats = Stats()
    # Every simulated client comes from 127.0.0.1: one client to the per-client limit.
    env = {
        "MIRROR_TAG_TTL": "3600",
        "MIRROR_LOG_LEVEL": "warning",
        "MIRROR_MAX_COLD_PER_CLIENT": "0",
    }
    proc = MirrorProcess(
        upstream_url,
        workdir / "data",
        cwd=workdir,
        extra_args=["--workers", str(options.workers)],
        env=env,
    )
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with proc, aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        clients = Clients(proc.url, content, stats)
        await warm_up(clients, session)
        mirror = await _load(clients, session, options, RssSampler(proc.pid))
        mirror.exit_status = await proc.stop()
    return _figures(options, stats, mirror, proc.stderr)


@dataclass
class _Mirror:
    """What the mirror's processes used while the clients ran."""

    sampler: RssSampler
    seconds: float
    cpu_seconds: float
    rss_after_warm_up: int
    rss_end: int
    vmhwm: int  # the sum of the kernel's high-water marks
    processes: int
    exit_status: int | None = None


async def _load(
    clients: Clients, session: aiohttp.ClientSession, options: Options, sampler: RssSampler
) -> _Mirror:
    """Every client from its start (spread over the ramp) to the deadline, the mirror's
    memory sampled meanwhile."""
    rss_after_warm_up = sampler.now()
    cpu_before = sampler.tree.cpu_seconds()
    started = time.monotonic()
    deadline = started + options.ramp + options.duration
    sampling = asyncio.create_task(sampler.run(started))
    try:
        await asyncio.gather(
            *(
                clients.client(session, n, started + options.ramp * n / options.clients, deadline)
                for n in range(options.clients)
            )
        )
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    elapsed = time.monotonic() - started
    cpu = sampler.tree.cpu_seconds() - cpu_before
    rss_end = sampler.now()
    hwm, processes = sampler.tree.peak_rss()
    return _Mirror(sampler, elapsed, cpu, rss_after_warm_up, rss_end, hwm, processes)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _figures(options: Options, stats: Stats, mirror: _Mirror, log: str) -> dict[str, Any]:
    """The result (the `--json` format): requests, errors, latency per kind, the mirror's
    memory and CPU; `log` is the mirror's stderr."""
    samples = mirror.sampler.samples
    peak = max((rss for _, rss in samples), default=mirror.rss_end)
    elapsed = mirror.seconds
    kinds = {
        kind: {
            "requests": len(values),
            "p50_ms": _ms(percentile(values, 0.50)),
            "p99_ms": _ms(percentile(values, 0.99)),
            "max_ms": _ms(max(values)),
        }
        for kind, values in sorted(stats.latencies.items())
    }
    every = [value for values in stats.latencies.values() for value in values]
    return {
        "options": asdict(options),
        "seconds": round(elapsed, 2),
        "requests": stats.requests,
        "errors": sum(stats.errors.values()),
        "errors_by_kind": dict(stats.errors),
        "error_examples": stats.examples,
        "requests_per_second": round(stats.requests / elapsed, 1),
        "mb_per_second": round(stats.bytes / MB / elapsed, 2),
        "bytes": stats.bytes,
        "p50_ms": _ms(percentile(every, 0.50)),
        "p99_ms": _ms(percentile(every, 0.99)),
        "max_ms": _ms(max(every, default=0.0)),
        "kinds": kinds,
        "cold_images_pulled": stats.cold_pulled,
        "cold_pool_exhausted": stats.cold_exhausted,
        "mirror": {
            "processes": mirror.processes,
            "rss_after_warm_up_mb": round(mirror.rss_after_warm_up / MB, 1),
            "rss_peak_mb": round(peak / MB, 1),
            "rss_end_mb": round(mirror.rss_end / MB, 1),
            "vmhwm_sum_mb": round(mirror.vmhwm / MB, 1),
            "rss_samples": [(round(t, 2), round(rss / MB, 1)) for t, rss in samples],
            "cpu_seconds": round(mirror.cpu_seconds, 1),
            "exit_status": mirror.exit_status,
            "tracebacks": log.count("Traceback"),
            "log_errors": log.count(" ERROR "),
        },
    }


def report(result: dict[str, Any], options: Options) -> list[str]:
    """Print the figures; return the reasons the run failed (none: it passed)."""
    mirror = result["mirror"]
    print(
        f"soak: {options.clients} clients for {options.duration:g} s (+{options.ramp:g} s ramp) "
        f"against mirror serve --workers {options.workers}, fake upstream"
    )
    print(
        f"requests  {result['requests']} in {result['seconds']} s: "
        f"{result['requests_per_second']} req/s, {result['mb_per_second']} MB/s, "
        f"errors {result['errors']}"
    )
    print(f"{'kind':<16}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for kind, row in result["kinds"].items():
        print(
            f"{kind:<16}{row['requests']:>10}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['max_ms']:>10}"
        )
    print(
        f"{'all':<16}{result['requests']:>10}{result['p50_ms']:>10}{result['p99_ms']:>10}{result['max_ms']:>10}"
    )
    print(
        f"cold images pulled {result['cold_images_pulled']}"
        + (
            f" (pool exhausted {result['cold_pool_exhausted']} times)"
            if result["cold_pool_exhausted"]
            else ""
        )
    )
    print(
        "upstream requests (each blob once) "
        + ", ".join(f"{k}: {v}" for k, v in sorted(result["upstream"].items()))
    )
    print(
        f"mirror RSS ({mirror['processes']} processes): "
        f"after warm-up {mirror['rss_after_warm_up_mb']} MB, "
        f"peak {mirror['rss_peak_mb']} MB, end {mirror['rss_end_mb']} MB "
        f"(sum of VmHWM {mirror['vmhwm_sum_mb']} MB); CPU {mirror['cpu_seconds']} s"
    )
    failures = []
    if result["errors"]:
        failures.append(f"{result['errors']} errors, e.g. {result['error_examples'][:5]}")
    if mirror["rss_peak_mb"] > options.max_rss_mb:
        failures.append(f"peak RSS {mirror['rss_peak_mb']} MB over {options.max_rss_mb} MB")
    if mirror["tracebacks"]:
        failures.append(f"{mirror['tracebacks']} tracebacks in the mirror's log")
    fetched = sum(n for key, n in result["upstream"].items() if key.startswith("cdn GET"))
    wanted = len(WARM_BLOBS) + 2 * result["cold_images_pulled"]
    if fetched > wanted:
        failures.append(f"{fetched} blob downloads from the upstream for {wanted} blobs")
    if mirror["exit_status"] != 0:
        failures.append(f"the mirror exited with {mirror['exit_status']}")
    print("result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)))
    return failures


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=500, help="concurrent clients (500)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--workers", type=int, default=1, help="mirror worker processes (1)")
    parser.add_argument(
        "--ramp", type=float, default=1.0, help="seconds over which clients start (1)"
    )
    parser.add_argument(
        "--cold-images",
        type=int,
        default=12_000,
        help="images the upstream holds for cold pulls (12000)",
    )
    parser.add_argument(
        "--max-rss-mb", type=float, default=512.0, help="fail above this peak (512)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = Options(
        args.clients, args.duration, args.workers, args.ramp, args.cold_images, args.max_rss_mb
    )
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one socket per client, twice
    content = Content.make(options.cold_images)
    upstream = UpstreamProcess(content)
    with upstream as url:
        with tempfile.TemporaryDirectory(prefix="mirror-soak-") as tmp:
            result = asyncio.run(soak(options, content, url, Path(tmp)))
        result["upstream"] = upstream.stop()
    failures = report(result, options)
    result["failures"] = failures
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
