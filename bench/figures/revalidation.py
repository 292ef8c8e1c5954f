"""Revalidation: the upstream requests that N Docker-style pulls of an unchanged tag cause
once its freshness time has passed, and the time they take."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

from bench.harness import MANIFEST_ACCEPT, BenchImage, Side
from bench.rows import Row
from bench.session import Bench


def revalidate(bench: Bench) -> None:
    """Upstream requests caused by N Docker-style pulls (HEAD the tag, GET the manifest
    by digest) of an unchanged tag once its freshness time has passed. Ours runs as a
    separate instance with `MIRROR_TAG_TTL` = `stale_ttl`; the reference has no such
    setting (it asks the upstream for every tag request). nginx is left out: its cache
    has no revalidation of its own to compare (a stale entry is fetched again whole)."""
    image = bench.image("small")
    ttl = bench.options.stale_ttl
    ours_stale = bench.harness.start_ours("ours-stale", env={"MIRROR_TAG_TTL": f"{ttl:g}"})
    theirs = bench.harness.distribution
    assert theirs is not None
    raw: dict[str, Any] = {"pulls": bench.options.pulls, "ours_tag_ttl_s": ttl, "runs": {}}
    try:
        for side in (ours_stale, theirs):
            raw["runs"][side.label] = _stale_pulls(bench, side, image, ttl)
    finally:
        ours_stale.stop()
    bench.raw["revalidate"] = raw
    bench.rows += _rows(raw["runs"], bench.options.pulls)


def _stale_pulls(bench: Bench, side: Side, image: BenchImage, ttl: float) -> dict[str, float]:
    """One pull to cache the tag (and warm the token), a wait past its freshness (the same
    for both), then `options.pulls` pulls: what the upstream and token server saw."""
    _docker_pulls(side, image, 1)
    time.sleep(ttl + 0.5)
    bench.up.reset_counts()
    tokens = bench.token_requests()
    started = time.monotonic()
    _docker_pulls(side, image, bench.options.pulls)
    elapsed = time.monotonic() - started
    summary: dict[str, float] = dict(bench.upstream_summary())
    summary["token"] = bench.token_requests() - tokens
    summary["seconds"] = round(elapsed, 3)
    bench.log(f"    {side.label:>12} {bench.options.pulls} pulls in {elapsed:.2f} s: {summary}")
    return summary


def _rows(runs: dict[str, dict[str, float]], n: int) -> list[Row]:
    return [
        Row(
            f"revalidate.{key}",
            "revalidation",
            label,
            unit,
            "lower",
            {side: float(side_runs[key]) for side, side_runs in runs.items()},
        )
        for key, label, unit in (
            ("manifest_get", f"{n} pulls after TTL: upstream manifest GETs", "requests"),
            ("manifest_head", f"{n} pulls after TTL: upstream manifest HEADs", "requests"),
            ("token", f"{n} pulls after TTL: token requests", "requests"),
            ("seconds", f"{n} pulls after TTL: time for all", "s"),
        )
    ]


def _docker_pulls(side: Side, image: BenchImage, count: int) -> None:
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
