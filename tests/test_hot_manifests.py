"""A hot manifest (a fresh tag, a digest the repository holds, both in memory) is answered
without an await and sent as bytes rendered once per digest: the same answer as the long
way gives, counted and logged the same, and replaced as soon as the tag moves and its
freshness says so. Checked through real HTTP, raw bytes where the client would hide them."""

from __future__ import annotations

import asyncio
import logging

import pytest

from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Manifest, make_image
from tests.conftest import Client, StartMirror
from tests.scrape import delta, scrape
from tests.test_observability import access_lines

TAG = "/v2/library/alpine/manifests/3.19"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
# What every answer carries, whichever way it was sent.
CONTENT_HEADERS = ("Content-Type", "Docker-Content-Digest", "ETag", "Content-Length")
COMMON_HEADERS = ("Docker-Distribution-API-Version", "X-Content-Type-Options", "Date", "Server")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror, clock: FakeClock) -> Client:
    return await start_mirror(upstream.url, clock=clock, tag_ttl=60)


def by_digest(manifest: Manifest) -> str:
    return f"/v2/library/alpine/manifests/{manifest.digest}"


async def exchange(mirror: Client, *requests: str) -> bytes:
    """Send `requests` (method and path, HTTP/1.1) on one connection, the last asking to
    close it, and return every byte the mirror sent back."""
    reader, writer = await asyncio.open_connection(mirror.host, mirror.port)
    try:
        for index, request in enumerate(requests):
            last = index == len(requests) - 1
            connection = "close" if last else "keep-alive"
            writer.write(
                f"{request} HTTP/1.1\r\nHost: mirror\r\nAccept: {ACCEPT}\r\n"
                f"Connection: {connection}\r\n\r\n".encode()
            )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


def one_answer(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """The status line, headers and body of a single answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


async def test_a_hot_tag_is_answered_from_memory_with_the_headers_of_the_first_answer(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest
) -> None:
    first = await mirror.get(TAG)
    assert await first.read() == alpine.data
    upstream.reset_counts()
    ids = {first.headers["X-Request-ID"]}
    for _ in range(3):
        hot = await mirror.get(TAG)
        assert (hot.status, await hot.read()) == (200, alpine.data)
        for name in CONTENT_HEADERS:
            assert hot.headers[name] == first.headers[name], name
        for name in COMMON_HEADERS:
            assert name in hot.headers, name
        assert "Warning" not in hot.headers
        ids.add(hot.headers["X-Request-ID"])
    assert len(ids) == 4  # a request id of its own for each answer
    assert upstream.requests == []


async def test_the_answer_follows_a_moved_tag_once_its_freshness_ends(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, clock: FakeClock
) -> None:
    for _ in range(2):  # fetched, then hot
        assert await (await mirror.get(TAG)).read() == alpine.data
    moved = make_image(seed=42)
    upstream.push_image("library/alpine", "3.19", moved)
    clock.advance(30)
    assert await (await mirror.get(TAG)).read() == alpine.data  # still fresh: the old answer
    upstream.reset_counts()
    clock.advance(31)
    for _ in range(3):  # revalidated once, then hot again with the new manifest
        resp = await mirror.get(TAG)
        assert (resp.status, await resp.read()) == (200, moved.data)
        assert resp.headers["Docker-Content-Digest"] == moved.digest
        assert resp.headers["ETag"] == f'"{moved.digest}"'
        assert resp.headers["Content-Length"] == str(len(moved.data))
        head = await mirror.head(TAG)
        assert head.headers["Docker-Content-Digest"] == moved.digest
        assert head.headers["Content-Length"] == str(len(moved.data))
    assert upstream.count(kind="manifest", method="HEAD") == 1
    assert upstream.count(kind="manifest", method="GET") == 1


async def test_a_head_of_a_hot_manifest_sends_its_headers_and_no_body(
    mirror: Client, alpine: Manifest
) -> None:
    for path in (TAG, by_digest(alpine)):
        await mirror.get(path)  # hot from now on
        raw = await exchange(mirror, f"HEAD {path}", f"GET {path}")
        # Were there a body after the HEAD's headers, the GET's answer would not follow them.
        head_part, _, rest = raw.partition(b"\r\n\r\n")
        assert head_part.startswith(b"HTTP/1.1 200 OK\r\n")
        assert f"Content-Length: {alpine.size}".encode() in head_part
        assert f"Docker-Content-Digest: {alpine.digest}".encode() in head_part
        assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
        assert rest.endswith(b"\r\n\r\n" + alpine.data)


async def test_if_none_match_of_a_hot_manifest_is_answered_304(
    mirror: Client, alpine: Manifest
) -> None:
    for path in (TAG, by_digest(alpine)):
        await mirror.get(path)
        held = await mirror.get(path, headers={"If-None-Match": f'"{alpine.digest}"'})
        assert (held.status, await held.read()) == (304, b"")
        assert held.headers["ETag"] == f'"{alpine.digest}"'
        assert held.headers["Docker-Content-Digest"] == alpine.digest
        other = await mirror.get(path, headers={"If-None-Match": '"sha256:other"'})
        assert (other.status, await other.read()) == (200, alpine.data)


async def test_a_hot_answer_is_counted_and_logged_like_any_other(
    mirror: Client, alpine: Manifest, caplog: pytest.LogCaptureFixture
) -> None:
    for path in (TAG, by_digest(alpine)):
        await mirror.get(path)
    caplog.set_level(logging.INFO, logger="mirror.access")
    caplog.clear()
    before = await scrape(mirror)
    for path in (TAG, TAG, by_digest(alpine)):
        assert (await mirror.get(path)).status == 200
    after = await scrape(mirror)
    requests = delta(after, before, "mirror_http_requests_total", route="manifest", status="200")
    assert requests == 3
    assert delta(after, before, "mirror_cache_hits_total", kind="tag") == 2
    assert delta(after, before, "mirror_cache_hits_total", kind="manifest") == 3
    durations = delta(after, before, "mirror_http_request_duration_seconds_count", route="manifest")
    assert durations == 3
    lines = [line for line in access_lines(caplog) if "/manifests/" in str(line["path"])]
    assert [(line["status"], line["cache"], line["bytes"]) for line in lines] == [
        (200, "hit", alpine.size)
    ] * 3


async def test_a_closing_or_http_1_0_client_gets_the_answer_aiohttp_would_give(
    mirror: Client, alpine: Manifest
) -> None:
    await mirror.get(TAG)
    closing = await exchange(mirror, f"GET {TAG}")
    status, headers, body = one_answer(closing)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Connection"] == "close"
    assert body == alpine.data
    reader, writer = await asyncio.open_connection(mirror.host, mirror.port)
    try:
        writer.write(f"GET {TAG} HTTP/1.0\r\nAccept: {ACCEPT}\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status, headers, body = one_answer(raw)
    assert status == "HTTP/1.0 200 OK"
    assert headers["Docker-Content-Digest"] == alpine.digest
    assert body == alpine.data
