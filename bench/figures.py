"""The measurements. Every figure is taken for both mirrors in the same run; repetitions
alternate which one goes first (ours, theirs; theirs, ours; ...), and each figure's table rows
use the median over the repetitions. Every run's numbers are kept in `raw` for the JSON.

While a wrk run lasts, the CPU time of every process involved is sampled (the mirror under
test, the upstream registry, the token server, and wrk itself), so the record shows which
side was the bottleneck on this 2-core machine, and the upstream's access log is read to
check that warm figures really were answered from the cache.
"""

from __future__ import annotations

import http.client
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from bench.harness import (
    MANIFEST_ACCEPT,
    BenchImage,
    Harness,
    ProcessTree,
    Side,
    fetch,
    machine_cpu_seconds,
)
from bench.load import CurlResult, WrkResult, curl, curl_parallel, lua_script, run_wrk
from testkit.upstream import BLOB_PATH, MANIFEST_PATH, RealUpstream

MB = 1_000_000  # figures are in decimal megabytes (wrk's own output uses 2^20)
RSS_TARGET_MB = 250.0
UPSTREAM_SAMPLES = 5  # direct upstream GETs per repetition of the cold figure
WARM_TIMEOUT = 90.0  # until a mirror answers a blob from its cache
OTHER_CPU_WARN_PCT = 25.0  # % of one core used by unrelated processes during a wrk run
FIGURES = ("blob", "manifest", "revalidate", "cold", "cold-concurrent", "rss")
# Which seeded images each figure needs.
FIGURE_IMAGES = {
    "blob": ("20m", "200m"),
    "manifest": ("small",),
    "revalidate": ("small",),
    "cold": ("200m",),
    "cold-concurrent": ("200m",),
    "rss": ("200m",),
}
WARM_FIGURES = frozenset({"blob", "manifest", "rss"})


@dataclass
class Options:
    duration: int = 6  # seconds per wrk run
    repeat: int = 3
    cold_repeat: int = 5  # single-client cold runs per mirror (time to first byte is noisy)
    warmup: int = 1  # seconds of unrecorded wrk load per cell and mirror (0: none)
    cold_clients: int = 20
    rss_clients: int = 32
    pulls: int = 100
    stale_ttl: float = 2.0


@dataclass
class Row:
    """One line of the table: a figure for both mirrors."""

    key: str
    figure: str
    label: str
    unit: str
    better: Literal["higher", "lower"]
    ours: float | None
    theirs: float | None
    target: str = ""
    passed: bool | None = None
    note: str = ""
    runs: dict[str, list[float]] = field(default_factory=dict)  # per-run values, by side

    @classmethod
    def of(
        cls,
        key: str,
        figure: str,
        label: str,
        unit: str,
        better: Literal["higher", "lower"],
        runs: Mapping[str, list[float]],
    ) -> Row:
        """A row of the medians of `runs` (side -> one value per repetition)."""
        return cls(
            key,
            figure,
            label,
            unit,
            better,
            median(runs.get("ours", [])),
            median(runs.get("theirs", [])),
            runs={side: list(values) for side, values in runs.items()},
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Row:
        return cls(
            data["key"],
            data["figure"],
            data["label"],
            data["unit"],
            data["better"],
            data["ours"],
            data["theirs"],
            target=data.get("target") or "",
            passed=data.get("passed"),
            note=data.get("note") or "",
            runs=data.get("runs") or {},
        )

    def spread(self, side: str) -> float | None:
        """Half the range of the runs, relative to their median (None for a single run)."""
        values = self.runs.get(side, [])
        middle = median(values)
        if len(values) < 2 or not middle:
            return None
        return (max(values) - min(values)) / 2 / abs(middle)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.theirs is None or self.theirs == 0:
            return None
        return self.ours / self.theirs

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "figure": self.figure,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "ours": self.ours,
            "theirs": self.theirs,
            "ratio_ours_theirs": self.ratio,
            "target": self.target or None,
            "passed": self.passed,
            "note": self.note or None,
            "runs": self.runs or None,
        }


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _cpu_pct(seconds: float, wall: float) -> float:
    return round(100 * seconds / wall, 1) if wall > 0 else 0.0


@dataclass
class Bench:
    harness: Harness
    options: Options
    workdir: Path
    log: Callable[[str], None] = print
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # peak RSS (MB) of each mirror in the warm 32-client 200 MiB runs
    warm_rss: dict[str, list[float]] = field(default_factory=dict)

    @property
    def up(self) -> RealUpstream:
        assert self.harness.upstream is not None
        return self.harness.upstream

    def image(self, key: str) -> BenchImage:
        return self.harness.images[key]

    def order(self, rep: int) -> tuple[Side, Side]:
        ours, theirs = self.harness.sides
        return (ours, theirs) if rep % 2 == 0 else (theirs, ours)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.log(f"  WARNING: {text}")

    # --- upstream observations ----------------------------------------------------------

    def upstream_summary(self) -> dict[str, int]:
        """What the upstream answered since its last `reset_counts` (401 challenges apart)."""
        counts = {"blob_get": 0, "blob_head": 0, "manifest_get": 0, "manifest_head": 0}
        other = 0
        for entry in self.up.requests():
            if entry.status == 401:
                continue
            kind = (
                "blob"
                if BLOB_PATH.match(entry.path)
                else "manifest"
                if MANIFEST_PATH.match(entry.path)
                else None
            )
            if kind is not None and entry.method in ("GET", "HEAD"):
                counts[f"{kind}_{entry.method.lower()}"] += 1
            else:
                other += 1
        counts["other"] = other
        return counts

    def token_requests(self) -> int:
        """Token requests the token server has logged so far (one stderr line each)."""
        try:
            text = self.harness.token.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(
            1 for line in text.splitlines() if '"GET /token' in line or '"POST /token' in line
        )

    def settled_blob_gets(self, digest: str, within: float = 15.0) -> int:
        """Upstream GETs of `digest`, once the count has stopped moving for a second (the
        reference stores a blob from a download of its own, in the background)."""
        deadline = time.monotonic() + within
        last = self.up.blob_gets(digest)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.up.blob_gets(digest)
            if now == last:
                break
            last = now
        return last

    # --- warming ------------------------------------------------------------------------

    def warm(self, keys: tuple[str, ...]) -> None:
        """Pull every image of `keys` through both mirrors until each answers every manifest
        and blob from its cache (the upstream sees no blob GET), checking the bytes."""
        for side in self.harness.sides:
            for key in keys:
                self.warm_image(side, self.image(key))

    def warm_image(self, side: Side, image: BenchImage) -> None:
        accept = {"Accept": MANIFEST_ACCEPT}
        for ref in (image.tag, image.manifest_digest):
            status, _, _, digest = fetch(side.url + image.manifest_path(ref), accept)
            if status != 200 or digest != image.manifest_digest:
                raise RuntimeError(
                    f"{side.label}: {image.repo}:{ref} answered {status} with {digest}, "
                    f"expected {image.manifest_digest}\n{side.stderr[-2000:]}"
                )
        deadline = time.monotonic() + WARM_TIMEOUT
        while True:
            self.up.reset_counts()
            status, _, size, digest = fetch(side.url + image.blob_path, timeout=WARM_TIMEOUT)
            if status != 200 or digest != image.layer_digest or size != image.layer_size:
                raise RuntimeError(
                    f"{side.label}: blob {image.layer_digest} answered {status}, {size} bytes, "
                    f"{digest}\n{side.stderr[-2000:]}"
                )
            if self.up.blob_gets(image.layer_digest) == 0:
                return  # answered from the cache
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.label} does not serve {image.key} from its cache")
            time.sleep(0.5)

    def prime_auth(self, side: Side, image: BenchImage) -> None:
        """Before a cold blob run, the same for both mirrors: one manifest GET by digest,
        so upstream challenge and token are in place (and the manifest cached)."""
        status, *_ = fetch(
            side.url + image.manifest_path(image.manifest_digest), {"Accept": MANIFEST_ACCEPT}
        )
        if status != 200:
            raise RuntimeError(f"{side.label}: manifest of {image.key} answered {status}")

    # --- one wrk run with its observations ----------------------------------------------

    def wrk_run(
        self,
        side: Side,
        path: str,
        *,
        connections: int,
        threads: int,
        headers: Mapping[str, str],
        timeout: int,
        duration: int | None = None,
        record: bool = True,
    ) -> WrkResult:
        duration = duration or self.options.duration
        script = lua_script(self.workdir / "lua", headers)
        tree = ProcessTree(side.pid)
        others = {
            "upstream": ProcessTree(self.up.pid),
            "token": ProcessTree(self.harness.token.pid),
        }
        if record:
            self.up.reset_counts()
            tokens_before = self.token_requests()
        tree.reset_peak_rss()
        cpu_before = tree.cpu_seconds()
        others_before = {name: t.cpu_seconds() for name, t in others.items()}
        busy_before, irq_before = machine_cpu_seconds()
        result = run_wrk(
            side.url + path,
            connections=connections,
            threads=threads,
            duration=duration,
            script=script,
            timeout=timeout,
        )
        wall = result.duration_s
        busy_after, irq_after = machine_cpu_seconds()
        busy = _cpu_pct(busy_after - busy_before, wall)
        rss, processes = tree.peak_rss()
        cpu = {
            "server": _cpu_pct(tree.cpu_seconds() - cpu_before, wall),
            **{
                name: _cpu_pct(t.cpu_seconds() - others_before[name], wall)
                for name, t in others.items()
            },
            "client": _cpu_pct(result.client_cpu_s, wall),
        }
        # Whatever else ran on the machine meanwhile (kernel threads, other people's jobs).
        cpu["other"] = round(max(0.0, busy - sum(cpu.values())), 1)
        cpu["interrupts"] = _cpu_pct(irq_after - irq_before, wall)
        cpu["machine"] = round(busy + cpu["interrupts"], 1)
        if cpu["other"] > OTHER_CPU_WARN_PCT:
            self.warn(
                f"{side.label} {path} c={connections}: {cpu['other']:.0f}% CPU went to other "
                "processes during the run; its numbers may be disturbed"
            )
        result.extra = {
            "server": side.label,
            "cpu_pct": cpu,
            "peak_rss_MB": round(rss / MB, 1),
            "server_processes": processes,
        }
        if record:
            result.extra["upstream_requests"] = self.upstream_summary()
            result.extra["token_requests"] = self.token_requests() - tokens_before
        if result.error_count:
            self.warn(f"{side.label} {path} c={connections}: wrk counted errors {result.errors}")
        return result

    def _describe(self, result: WrkResult, what: str) -> str:
        cpu = result.extra["cpu_pct"]
        return (
            f"    {result.extra['server']:>6} {what}  "
            f"cpu% server {cpu['server']:.0f} client {cpu['client']:.0f} "
            f"upstream {cpu['upstream']:.0f} token {cpu['token']:.0f} "
            f"other {cpu['other']:.0f} irq {cpu['interrupts']:.0f}"
        )

    # --- figures ------------------------------------------------------------------------

    def blob(self) -> None:
        """Warm blob throughput with 1 and 32 clients, 20 MiB and 200 MiB blobs."""
        raw: list[dict[str, Any]] = []
        for key in ("20m", "200m"):
            image = self.image(key)
            for connections, threads in ((1, 1), (32, 2)):
                label = f"{key[:-1]} MiB blob, {connections} client{'s' * (connections > 1)}"
                self.log(f"  warm blob: {label}")
                runs: dict[str, list[WrkResult]] = {"ours": [], "theirs": []}
                kwargs: dict[str, Any] = {
                    "connections": connections,
                    "threads": threads,
                    "headers": {},
                    "timeout": 60,
                }
                if self.options.warmup:
                    for side in self.harness.sides:
                        self.wrk_run(
                            side,
                            image.blob_path,
                            duration=self.options.warmup,
                            record=False,
                            **kwargs,
                        )
                for rep in range(self.options.repeat):
                    for side in self.order(rep):
                        result = self.wrk_run(side, image.blob_path, **kwargs)
                        runs[side.label].append(result)
                        self.log(
                            self._describe(
                                result, f"{result.bytes / MB / result.duration_s:9.1f} MB/s"
                            )
                        )
                        ups = result.extra["upstream_requests"]
                        if ups["blob_get"]:
                            self.warn(
                                f"{side.label}: {ups['blob_get']} upstream blob GETs in a warm run"
                            )
                        if key == "200m" and connections == 32:
                            self.warm_rss.setdefault(side.label, []).append(
                                result.extra["peak_rss_MB"]
                            )
                row = Row.of(
                    f"blob.{key}.c{connections}",
                    "warm blob throughput",
                    label,
                    "MB/s",
                    "higher",
                    {s: [r.bytes / MB / r.duration_s for r in rs] for s, rs in runs.items()},
                )
                row.target = "ratio ≥ 1.0"
                row.passed = row.ratio is not None and row.ratio >= 1.0
                self.rows.append(row)
                raw.append(
                    {
                        "image": key,
                        "blob_bytes": image.layer_size,
                        "connections": connections,
                        "threads": threads,
                        "runs": {s: [r.to_json() for r in rs] for s, rs in runs.items()},
                    }
                )
        self.raw["blob"] = raw

    def manifest(self) -> None:
        """Warm manifest GETs by tag and by digest, 1 and 64 clients."""
        image = self.image("small")
        raw: list[dict[str, Any]] = []
        headers = {"Accept": MANIFEST_ACCEPT}
        for by, ref in (("tag", image.tag), ("digest", image.manifest_digest)):
            path = image.manifest_path(ref)
            for connections, threads in ((1, 1), (64, 2)):
                label = f"{connections} client{'s' * (connections > 1)}"
                self.log(f"  warm manifest by {by}: {label}")
                runs: dict[str, list[WrkResult]] = {"ours": [], "theirs": []}
                kwargs: dict[str, Any] = {
                    "connections": connections,
                    "threads": threads,
                    "headers": headers,
                    "timeout": 10,
                }
                if self.options.warmup:
                    for side in self.harness.sides:
                        self.wrk_run(
                            side, path, duration=self.options.warmup, record=False, **kwargs
                        )
                for rep in range(self.options.repeat):
                    for side in self.order(rep):
                        result = self.wrk_run(side, path, **kwargs)
                        runs[side.label].append(result)
                        lat = result.latency_ms
                        self.log(
                            self._describe(
                                result,
                                f"{result.rps:9.0f} req/s p50 {lat['p50']:.2f} ms "
                                f"p99 {lat['p99']:.2f} ms",
                            )
                        )
                base = f"manifest.{by}.c{connections}"
                figure = f"manifest by {by}"
                rps_row = Row.of(
                    f"{base}.rps",
                    figure,
                    label + ": requests/s",
                    "req/s",
                    "higher",
                    {s: [r.rps for r in rs] for s, rs in runs.items()},
                )
                p50_row = Row.of(
                    f"{base}.p50",
                    figure,
                    label + ": p50 latency",
                    "ms",
                    "lower",
                    {s: [r.latency_ms["p50"] for r in rs] for s, rs in runs.items()},
                )
                p99_row = Row.of(
                    f"{base}.p99",
                    figure,
                    label + ": p99 latency",
                    "ms",
                    "lower",
                    {s: [r.latency_ms["p99"] for r in rs] for s, rs in runs.items()},
                )
                if connections == 64:
                    need = 10.0 if by == "tag" else 2.0
                    rps_row.target = f"ratio ≥ {need:g}"
                    rps_row.passed = rps_row.ratio is not None and rps_row.ratio >= need
                    p99_row.target = "ours ≤ theirs"
                    p99_row.passed = (
                        p99_row.ours is not None
                        and p99_row.theirs is not None
                        and p99_row.ours <= p99_row.theirs
                    )
                self.rows += [rps_row, p50_row, p99_row]
                raw.append(
                    {
                        "by": by,
                        "path": path,
                        "connections": connections,
                        "threads": threads,
                        "runs": {s: [r.to_json() for r in rs] for s, rs in runs.items()},
                    }
                )
        self.raw["manifest"] = raw

    def revalidate(self) -> None:
        """Upstream requests caused by N Docker-style pulls (HEAD the tag, GET the manifest
        by digest) of an unchanged tag once its freshness time has passed. Ours runs as a
        separate instance with `MIRROR_TAG_TTL` = `stale_ttl`; the reference has no such
        setting (it asks the upstream for every tag request)."""
        image = self.image("small")
        ttl = self.options.stale_ttl
        ours_stale = self.harness.start_ours("ours-stale", env={"MIRROR_TAG_TTL": f"{ttl:g}"})
        _, theirs = self.harness.sides
        raw: dict[str, Any] = {"pulls": self.options.pulls, "ours_tag_ttl_s": ttl, "runs": {}}
        try:
            for side in (ours_stale, theirs):
                self._docker_pulls(side, image, 1)  # cached, and the token is warm
                time.sleep(ttl + 0.5)  # past the freshness time (the same wait for both)
                self.up.reset_counts()
                tokens = self.token_requests()
                started = time.monotonic()
                self._docker_pulls(side, image, self.options.pulls)
                elapsed = time.monotonic() - started
                summary: dict[str, float] = dict(self.upstream_summary())
                summary["token"] = self.token_requests() - tokens
                summary["seconds"] = round(elapsed, 3)
                raw["runs"][side.label] = summary
                self.log(
                    f"    {side.label:>6} {self.options.pulls} pulls in {elapsed:.2f} s: {summary}"
                )
        finally:
            ours_stale.stop()
        self.raw["revalidate"] = raw
        runs = raw["runs"]
        n = self.options.pulls
        for key, label, unit in (
            ("manifest_get", f"{n} pulls after TTL: upstream manifest GETs", "requests"),
            ("manifest_head", f"{n} pulls after TTL: upstream manifest HEADs", "requests"),
            ("token", f"{n} pulls after TTL: token requests", "requests"),
            ("seconds", f"{n} pulls after TTL: time for all", "s"),
        ):
            self.rows.append(
                Row(
                    f"revalidate.{key}",
                    "revalidation",
                    label,
                    unit,
                    "lower",
                    float(runs["ours"][key]),
                    float(runs["theirs"][key]),
                )
            )

    def _docker_pulls(self, side: Side, image: BenchImage, count: int) -> None:
        """`count` sequential pulls over one keep-alive connection, as Docker's: HEAD the tag
        (with Accept), then GET the manifest by the digest it named."""
        parts = urlsplit(side.url)
        assert parts.hostname and parts.port
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {"Accept": MANIFEST_ACCEPT}
        try:
            for _ in range(count):
                conn.request("HEAD", image.manifest_path(), headers=headers)
                resp = conn.getresponse()
                resp.read()
                digest = resp.getheader("Docker-Content-Digest")
                if resp.status != 200 or digest != image.manifest_digest:
                    raise RuntimeError(f"{side.label}: HEAD of the tag: {resp.status}, {digest}")
                conn.request("GET", image.manifest_path(digest), headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or len(body) != image.manifest_size:
                    raise RuntimeError(f"{side.label}: GET by digest: {resp.status}")
        finally:
            conn.close()

    def cold(self) -> None:
        """One client, 200 MiB blob, empty cache (each mirror restarted with fresh storage
        before every run; auth primed the same way for both): time to first byte and total
        time, next to the upstream's own for the same blob."""
        image = self.image("200m")
        up_url = self.up.url + image.blob_path
        token = self.harness.token.token(f"repository:{image.repo}:pull")
        auth = {"Authorization": f"Bearer {token}"}
        upstream_runs: list[CurlResult] = []
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
        for rep in range(self.options.cold_repeat):
            # The upstream's own time to first byte varies by several ms from one request
            # to the next; it is cheap to sample more often than the mirrors.
            for _ in range(UPSTREAM_SAMPLES):
                result = curl(up_url, auth)
                self._check(result, image, "upstream")
                upstream_runs.append(result)
            self.log(
                "    upstream direct: TTFB "
                + ", ".join(f"{r.ttfb_s * 1000:.1f}" for r in upstream_runs[-UPSTREAM_SAMPLES:])
                + f" ms; total {result.total_s:.2f} s"
            )
            for side in self.order(rep):
                side.restart_fresh()
                self.prime_auth(side, image)
                self.up.reset_counts()
                result = curl(side.url + image.blob_path)
                self._check(result, image, side.label)
                fetches = self.settled_blob_gets(image.layer_digest)
                runs[side.label].append({**result.__dict__, "upstream_blob_gets": fetches})
                self.log(
                    f"    {side.label:>6} cold: TTFB {result.ttfb_s * 1000:.1f} ms, "
                    f"total {result.total_s:.2f} s, upstream fetches {fetches}"
                )
        up_ttfb = median([r.ttfb_s * 1000 for r in upstream_runs])
        up_total = median([r.total_s for r in upstream_runs])
        assert up_ttfb is not None and up_total is not None
        limit = up_ttfb + 10
        ttfb_row = Row.of(
            "cold.ttfb",
            "cold blob",
            "200 MiB, 1 client: time to first byte",
            "ms",
            "lower",
            {s: [r["ttfb_s"] * 1000 for r in rs] for s, rs in runs.items()},
        )
        ttfb_row.target = f"ours ≤ upstream {up_ttfb:.1f} + 10 ms"
        ttfb_row.passed = ttfb_row.ours is not None and ttfb_row.ours <= limit
        total_row = Row.of(
            "cold.total",
            "cold blob",
            "200 MiB, 1 client: total time",
            "s",
            "lower",
            {s: [r["total_s"] for r in rs] for s, rs in runs.items()},
        )
        total_row.note = f"upstream direct: {up_total:.2f} s"
        fetch_row = Row.of(
            "cold.fetches",
            "cold blob",
            "200 MiB, 1 client: upstream fetches",
            "GETs",
            "lower",
            {s: [float(r["upstream_blob_gets"]) for r in rs] for s, rs in runs.items()},
        )
        self.rows += [ttfb_row, total_row, fetch_row]
        self.raw["cold"] = {
            "blob_bytes": image.layer_size,
            "auth": "primed before every run: one manifest GET by digest through the mirror",
            "upstream_direct": [r.__dict__ for r in upstream_runs],
            "upstream_direct_median": {"ttfb_ms": up_ttfb, "total_s": up_total},
            "runs": runs,
        }

    def _check(self, result: CurlResult, image: BenchImage, who: str) -> None:
        if not result.ok(image.layer_size):
            raise RuntimeError(
                f"{who}: GET {image.layer_digest}: status {result.status}, "
                f"{result.size} of {image.layer_size} bytes {result.error}"
            )

    def _cold_parallel(self, side: Side, image: BenchImage, clients: int) -> dict[str, Any]:
        side.restart_fresh()
        self.prime_auth(side, image)
        self.up.reset_counts()
        tree = ProcessTree(side.pid)
        tree.reset_peak_rss()
        results, wall = curl_parallel(side.url + image.blob_path, clients)
        rss, processes = tree.peak_rss()
        bad = [r for r in results if not r.ok(image.layer_size)]
        if bad:
            raise RuntimeError(
                f"{side.label}: {len(bad)} of {clients} cold transfers failed: {bad[0]}"
            )
        fetches = self.settled_blob_gets(image.layer_digest)
        return {
            "clients": clients,
            "wall_s": round(wall, 3),
            "ttfb_ms": sorted(round(r.ttfb_s * 1000, 1) for r in results),
            "total_s": sorted(round(r.total_s, 3) for r in results),
            "upstream_blob_gets": fetches,
            "peak_rss_MB": round(rss / MB, 1),
            "server_processes": processes,
        }

    def cold_concurrent(self) -> None:
        """`cold_clients` clients ask an empty mirror for the same 200 MiB blob at once:
        wall time until the last has it all, and upstream GETs of that blob."""
        image = self.image("200m")
        clients = self.options.cold_clients
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
        for rep in range(self.options.repeat):
            for side in self.order(rep):
                run = self._cold_parallel(side, image, clients)
                runs[side.label].append(run)
                self.log(
                    f"    {side.label:>6} {clients} cold clients: {run['wall_s']:.2f} s, "
                    f"upstream fetches {run['upstream_blob_gets']}, "
                    f"peak RSS {run['peak_rss_MB']:.0f} MB"
                )
        label = f"200 MiB, {clients} clients at once"
        fetch_row = Row.of(
            "cold_concurrent.fetches",
            "cold blob, concurrent",
            f"{label}: upstream fetches (max over runs)",
            "GETs",
            "lower",
            {s: [float(r["upstream_blob_gets"]) for r in rs] for s, rs in runs.items()},
        )
        # The worst run counts here, not the median.
        fetch_row.ours = max(fetch_row.runs["ours"])
        fetch_row.theirs = max(fetch_row.runs["theirs"])
        fetch_row.target = "ours = 1"
        fetch_row.passed = all(r["upstream_blob_gets"] == 1 for r in runs["ours"])
        wall_row = Row.of(
            "cold_concurrent.wall",
            "cold blob, concurrent",
            f"{label}: time until all done",
            "s",
            "lower",
            {s: [r["wall_s"] for r in rs] for s, rs in runs.items()},
        )
        self.rows += [wall_row, fetch_row]
        self.raw["cold_concurrent"] = {"blob_bytes": image.layer_size, "runs": runs}

    def rss(self) -> None:
        """Peak RSS (VmHWM, reset before the run; summed over the process tree) with
        `rss_clients` clients on the 200 MiB blob: cold (all at once on an empty cache), and
        warm (the wrk runs of the blob figure, or one such run here)."""
        image = self.image("200m")
        clients = self.options.rss_clients
        cold: dict[str, dict[str, Any]] = {}
        for side in self.order(0):
            cold[side.label] = run = self._cold_parallel(side, image, clients)
            self.log(
                f"    {side.label:>6} {clients} cold clients: peak RSS {run['peak_rss_MB']:.0f} MB "
                f"({run['server_processes']} process(es)), {run['wall_s']:.2f} s, "
                f"upstream fetches {run['upstream_blob_gets']}"
            )
        warm_source = "the warm 32-client 200 MiB runs of the blob figure"
        if not self.warm_rss:
            warm_source = "one warm 32-client 200 MiB wrk run"
            for side in self.order(0):
                self.warm_image(side, image)
                result = self.wrk_run(
                    side, image.blob_path, connections=clients, threads=2, headers={}, timeout=60
                )
                self.warm_rss.setdefault(side.label, []).append(result.extra["peak_rss_MB"])
                self.log(self._describe(result, f"peak RSS {result.extra['peak_rss_MB']:.0f} MB"))
        cold_mb = {s: run["peak_rss_MB"] for s, run in cold.items()}
        warm_mb = {s: max(v) for s, v in self.warm_rss.items()}
        for key, label, values in (
            ("rss.cold", f"{clients} clients, cold 200 MiB", cold_mb),
            ("rss.warm", f"{clients} clients, warm 200 MiB", warm_mb),
        ):
            row = Row(
                key,
                "peak RSS",
                label,
                "MB",
                "lower",
                values.get("ours"),
                values.get("theirs"),
                target=f"ours ≤ {RSS_TARGET_MB:g} MB",
            )
            row.passed = row.ours is not None and row.ours <= RSS_TARGET_MB
            processes = cold["ours"]["server_processes"]
            if processes > 1:
                row.note = f"ours: VmHWM summed over its {processes} processes"
            self.rows.append(row)
        self.raw["rss"] = {
            "method": "VmHWM from /proc/<pid>/status after `echo 5 > /proc/<pid>/clear_refs`, "
            "summed over the mirror's process tree",
            "ours_processes": cold["ours"]["server_processes"],
            "cold": cold,
            "warm_MB": self.warm_rss,
            "warm_source": warm_source,
        }
