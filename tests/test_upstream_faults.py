"""Upstream faults beside the matrix in test_fault_matrix.py (which covers every fault for a
manifest and a blob pull: the client's answer, the cache, the metrics, leaks, recovery):
an upstream silent past the idle `read_timeout` before its headers, and a 401 that a fresh
token cures."""

from __future__ import annotations

from testkit.fakeupstream import FakeRegistry, Fault, Manifest
from tests.conftest import StartMirror


async def test_silent_upstream_times_out_with_504(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    mirror = await start_mirror(upstream.url, read_timeout=0.3)
    upstream.add_fault(Fault("slow", delay=3.0, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 504
    assert "timed out" in (await resp.json())["errors"][0]["message"]


async def test_upstream_401_is_retried_once_with_a_fresh_token(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    mirror = await start_mirror(upstream.url, tag_ttl=0)  # every pull asks the upstream
    assert (await mirror.get("/v2/library/alpine/manifests/3.19")).status == 200
    tokens_before = upstream.count(server="auth")
    upstream.add_fault(Fault("status", status=401, path_contains="/manifests/3.19"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 200
    assert upstream.count(server="auth") == tokens_before + 1
