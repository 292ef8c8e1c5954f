"""Upstream faults become clean, specific errors that name the upstream; the cache stays
correct and the mirror recovers as soon as the upstream does."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Client, StartMirror, answered, content_files
from tests.fakeupstream import FakeRegistry, Fault, Manifest
from tests.mirrorproc import free_port


async def error_of(resp: object) -> dict[str, str]:
    body = await resp.json()  # type: ignore[attr-defined]
    error: dict[str, str] = body["errors"][0]
    return error


async def test_upstream_429_is_passed_on_with_retry_after(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.add_fault(
        Fault("status", status=429, headers={"Retry-After": "17"}, path_contains="/manifests/")
    )
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "17"
    error = await error_of(resp)
    assert error["code"] == "TOOMANYREQUESTS"
    assert upstream.url.removeprefix("http://") in error["message"]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_upstream_5xx_becomes_502_naming_the_upstream(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, status: int
) -> None:
    upstream.add_fault(Fault("status", status=status, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 502
    error = await error_of(resp)
    assert error["code"] == "UNAVAILABLE"
    assert f"answered HTTP {status}" in error["message"]
    assert upstream.url.removeprefix("http://") in error["message"]
    # The fault was one-shot; the mirror itself holds no grudge.
    assert (await mirror.get("/v2/library/alpine/manifests/3.19")).status == 200


async def test_unreachable_upstream_is_503(start_mirror: StartMirror, data_dir: Path) -> None:
    port = free_port()
    mirror = await start_mirror(f"http://127.0.0.1:{port}")
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 503
    error = await error_of(resp)
    assert error["code"] == "UNAVAILABLE"
    assert f"127.0.0.1:{port} is unreachable" in error["message"]
    blob = await mirror.get("/v2/library/alpine/blobs/sha256:" + "1" * 64)
    assert blob.status == 503
    assert content_files(data_dir) == set()


async def test_silent_upstream_times_out_with_504(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest
) -> None:
    mirror = await start_mirror(upstream.url, read_timeout=0.3)
    upstream.add_fault(Fault("slow", delay=3.0, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 504
    assert "timed out" in (await error_of(resp))["message"]


async def test_blob_storage_that_never_answers_times_out_and_caches_nothing(
    upstream: FakeRegistry, start_mirror: StartMirror, alpine: Manifest, data_dir: Path
) -> None:
    mirror = await start_mirror(upstream.url, read_timeout=0.3)
    layer = alpine.layers[0]
    upstream.add_fault(Fault("slow", server="cdn", delay=3.0))
    resp = await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")
    assert resp.status == 504
    assert {p for p in content_files(data_dir) if not p.startswith("manifests/")} == set()


async def test_dropped_connection_becomes_502(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.add_fault(Fault("drop", times=2, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "UNAVAILABLE"


async def test_blob_errors_before_the_body_are_clean_json(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, data_dir: Path
) -> None:
    layer = alpine.layers[0]
    upstream.add_fault(Fault("status", status=500, path_contains="/blobs/"))
    resp = await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")
    assert resp.status == 502
    assert (await error_of(resp))["code"] == "UNAVAILABLE"
    assert content_files(data_dir) == set()
    ok = await mirror.get(f"/v2/library/alpine/blobs/{layer.digest}")
    assert await ok.read() == layer.data


async def test_manifest_with_wrong_bytes_is_refused_and_not_cached(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, data_dir: Path
) -> None:
    upstream.add_fault(Fault("corrupt", method="GET", path_contains="/manifests/"))
    resp = await mirror.get(f"/v2/library/alpine/manifests/{alpine.digest}")
    assert resp.status == 502
    assert "does not match" in (await error_of(resp))["message"]
    assert content_files(data_dir) == set()
    ok = await mirror.get(f"/v2/library/alpine/manifests/{alpine.digest}")
    assert await ok.read() == alpine.data


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


async def test_upstream_that_keeps_refusing_gives_denied(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.add_fault(Fault("status", status=401, times=None, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 403
    assert (await error_of(resp))["code"] == "DENIED"
    # Retried once, not in a loop.
    assert answered(upstream, kind="manifest") == 0
    assert upstream.count(kind="manifest") == 2


async def test_token_service_failure_is_502_naming_it(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    upstream.add_fault(Fault("status", server="auth", status=500))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 502
    assert "token service failed" in (await error_of(resp))["message"]


async def test_gateway_errors_name_the_upstream_in_the_status_line_too(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """Docker and skopeo print a 5xx's status line but not its body."""
    upstream.add_fault(Fault("status", status=500, path_contains="/manifests/"))
    resp = await mirror.get("/v2/library/alpine/manifests/3.19")
    assert resp.status == 502
    reason = resp.reason or ""
    assert reason.startswith("Bad Gateway (upstream ")
    assert upstream.url.removeprefix("http://") in reason
