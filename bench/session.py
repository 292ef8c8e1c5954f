"""A benchmark run's shared state and what every figure needs from it: the options, the
rows and raw numbers taken so far, the order of the sides per repetition, the upstream's
request counts, and warming a mirror until it answers from its cache.

Every figure is taken for ours and its peers in the same run; repetitions rotate which one
goes first (ours, distribution, nginx; distribution, nginx, ours; ...), and each figure's
table rows use the median over the repetitions. Every run's numbers are kept in `raw` for
the JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import MANIFEST_ACCEPT, BenchImage, Harness, Side, fetch
from bench.nginx_cache import NginxCache
from bench.rows import Row
from testkit.upstream import BLOB_PATH, MANIFEST_PATH, RealUpstream

WARM_TIMEOUT = 90.0  # until a mirror answers a blob from its cache
QUIET_SECONDS = 0.3  # the upstream logged nothing for this long: nothing is in flight
QUIET_TIMEOUT = 10.0


@dataclass
class Options:
    duration: int = 4  # seconds per wrk run
    repeat: int = 3
    cold_repeat: int = 5  # single-client cold runs per mirror (time to first byte is noisy)
    warmup: int = 1  # seconds of unrecorded wrk load per cell and mirror (0: none)
    cold_clients: int = 20
    rss_clients: int = 32
    pulls: int = 100
    stale_ttl: float = 2.0


@dataclass
class Bench:
    harness: Harness
    options: Options
    workdir: Path
    log: Callable[[str], None] = print
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # peak RSS (MB) of each side in the warm 32-client 200 MiB runs
    warm_rss: dict[str, list[float]] = field(default_factory=dict)
    figure_seconds: dict[str, float] = field(default_factory=dict)  # how long each took

    @property
    def up(self) -> RealUpstream:
        assert self.harness.upstream is not None
        return self.harness.upstream

    def image(self, key: str) -> BenchImage:
        return self.harness.images[key]

    def order(self, rep: int, sides: Sequence[Side] | None = None) -> list[Side]:
        """`sides` (all of the harness's by default) rotated by `rep`: in as many
        repetitions as there are sides, each goes first once."""
        chosen = list(self.harness.sides if sides is None else sides)
        shift = rep % len(chosen)
        return chosen[shift:] + chosen[:shift]

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

    def wait_upstream_quiet(self) -> None:
        """Until the upstream has logged no request for `QUIET_SECONDS` (bounded): what a
        side still had in flight when its wrk run ended (distribution goes on asking the
        upstream for the tag 64 clients asked it for) is then answered before the next run,
        not counted in it, nor taking its CPU."""
        log = self.up.stdout_path
        size, changed = log.stat().st_size, time.monotonic()
        deadline = changed + QUIET_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = log.stat().st_size
            if now != size:
                size, changed = now, time.monotonic()
            elif time.monotonic() - changed >= QUIET_SECONDS:
                return
        self.warn(f"the upstream was still being asked after {QUIET_TIMEOUT:g} s")

    def settled_blob_gets(self, digest: str, within: float = 15.0) -> int:
        return settled_blob_gets(self.up, digest, within)

    # --- warming ------------------------------------------------------------------------

    def warm(self, keys: tuple[str, ...]) -> None:
        """Pull every image of `keys` through every side until each answers every manifest
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

    def require_cached(self, side: Side, path: str, headers: Mapping[str, str]) -> None:
        """Before a warm figure: if `side` is nginx, fail unless it answers `path` from its
        cache (it says so in a header; the others are checked by the upstream's count)."""
        if isinstance(side, NginxCache):
            side.require_hit(path, headers)

    def prime_auth(self, side: Side, image: BenchImage) -> None:
        """Before a cold blob run, the same for every side: one manifest GET by digest, so
        upstream challenge and token are in place (and the manifest cached)."""
        status, *_ = fetch(
            side.url + image.manifest_path(image.manifest_digest), {"Accept": MANIFEST_ACCEPT}
        )
        if status != 200:
            raise RuntimeError(f"{side.label}: manifest of {image.key} answered {status}")


def settled_blob_gets(upstream: RealUpstream, digest: str, within: float = 15.0) -> int:
    """Upstream GETs of `digest`, once the count has stopped moving for a second (the
    reference stores a blob from a download of its own, in the background)."""
    deadline = time.monotonic() + within
    last = upstream.blob_gets(digest)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = upstream.blob_gets(digest)
        if now == last:
            break
        last = now
    return last
