"""Blob bodies on their own connection pool: manifests, tokens and HEADs never wait behind
bulk transfers; waiting for a pooled connection has its own bound (a clean 503) and does not
eat a request's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from mirror.config import UpstreamSettings
from mirror.reference import Digest
from mirror.upstream.client import BlobStream, UpstreamClient, UpstreamError
from mirror.upstream.options import ClientOptions
from testkit.fakeupstream import DOCKER_MANIFEST, Blob, FakeRegistry, Fault, Manifest, random_layer
from testkit.waiting import wait_until
from tests.conftest import StartMirror

BLOB_CONNECTIONS = 4
# Bounds on waits that succeed at once; nothing here measures speed.
BOUND = 10.0
# A transfer the fake upstream holds open: its first chunk, then nothing for this long.
STALL = 60.0


def big_blobs(upstream: FakeRegistry, count: int) -> list[Blob]:
    """Layers of several 64 KiB chunks in library/alpine, so a stalled one stays open."""
    blobs = [random_layer(256 * 1024, seed=100 + i) for i in range(count)]
    for blob in blobs:
        upstream.push_blob("library/alpine", blob)
    return blobs


def stall_blob_bodies(upstream: FakeRegistry) -> None:
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=STALL, times=None))


async def client_for(upstream: FakeRegistry, **options: float) -> UpstreamClient:
    settings = UpstreamSettings(host="docker.io", url=upstream.url, library_prefix=True)
    return UpstreamClient(settings, ClientOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
async def client(upstream: FakeRegistry) -> AsyncIterator[UpstreamClient]:
    client = await client_for(
        upstream, blob_connections=BLOB_CONNECTIONS, pool_timeout=0.2, read_timeout=BOUND
    )
    yield client
    await client.close()


async def hold_open(stack: AsyncExitStack, client: UpstreamClient, blob: Blob) -> BlobStream:
    """Open a blob download and take its first chunk: the transfer is in flight."""
    stream = await stack.enter_async_context(
        client.open_blob("library/alpine", Digest.parse(blob.digest))
    )
    assert await anext(stream.chunks)
    return stream


async def test_manifests_and_heads_do_not_wait_behind_a_full_blob_pool(
    client: UpstreamClient, upstream: FakeRegistry, alpine: Manifest
) -> None:
    blobs = big_blobs(upstream, BLOB_CONNECTIONS + 1)
    stall_blob_bodies(upstream)
    async with AsyncExitStack() as transfers:
        for blob in blobs[:BLOB_CONNECTIONS]:
            await hold_open(transfers, client, blob)

        async with asyncio.timeout(BOUND):
            fetched = await client.get_manifest("library/alpine", "3.19", DOCKER_MANIFEST)
            size = await client.head_blob("library/alpine", Digest.parse(blobs[-1].digest))
        assert fetched.data == alpine.data
        assert size == blobs[-1].size

        # ...while a further blob finds its pool full: a clean 503, not a timeout.
        with pytest.raises(UpstreamError) as failure:
            await hold_open(transfers, client, blobs[-1])
        assert failure.value.status == 503
        assert str(failure.value) == (
            f"upstream {client.name} connection pool exhausted: all {BLOB_CONNECTIONS} blob "
            "connections stayed busy for 0.2s"
        )
        stalled = [r for r in upstream.filter_requests(server="cdn") if r.status == 200]
        assert len(stalled) == BLOB_CONNECTIONS  # still open: none has finished


async def test_waiting_for_a_connection_does_not_eat_the_request_timeout(
    upstream: FakeRegistry, alpine: Manifest
) -> None:
    client = await client_for(
        upstream, blob_connections=1, pool_timeout=BOUND, request_timeout=0.3, read_timeout=BOUND
    )
    first, second = big_blobs(upstream, 2)
    try:
        async with AsyncExitStack() as transfer:
            upstream.add_fault(Fault("slow", server="cdn", chunk_delay=STALL))
            await hold_open(transfer, client, first)

            async def download() -> bytes:
                async with client.open_blob("library/alpine", Digest.parse(second.digest)) as s:
                    return b"".join([chunk async for chunk in s.chunks])

            waiting = asyncio.create_task(download())
            # A request that times out shows that more than request_timeout has passed
            # while `waiting` waited for the one blob connection.
            upstream.add_fault(Fault("slow", delay=STALL, path_contains="/manifests/"))
            with pytest.raises(UpstreamError, match="timed out"):
                await client.get_manifest("library/alpine", "3.19", DOCKER_MANIFEST)
            assert not waiting.done()
        # The first transfer is released: the waiting one gets its connection and its
        # whole request_timeout.
        async with asyncio.timeout(BOUND):
            assert await waiting == second.data
    finally:
        await client.close()


# --- through the mirror ---------------------------------------------------------------------


async def test_a_manifest_pull_completes_while_slow_blob_downloads_fill_the_pool(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    mirror = await start_mirror(
        upstream.url, blob_connections=BLOB_CONNECTIONS, pool_timeout=0.2, read_timeout=BOUND
    )
    blobs = big_blobs(upstream, BLOB_CONNECTIONS)
    stall_blob_bodies(upstream)
    downloads = [
        asyncio.create_task(mirror.get(f"/v2/library/alpine/blobs/{blob.digest}")) for blob in blobs
    ]
    try:
        await wait_until(
            lambda: upstream.count(server="cdn") == BLOB_CONNECTIONS,
            within=BOUND,
            message="every blob download reached the CDN",
        )
        async with asyncio.timeout(BOUND):
            resp = await mirror.get("/v2/library/alpine/manifests/3.19")
            assert resp.status == 200
            assert await resp.read() == alpine.data
        assert all(r.status == 200 for r in upstream.filter_requests(server="cdn"))
        assert not any(task.done() and task.result().status != 200 for task in downloads)

        resp = await mirror.get(f"/v2/library/alpine/blobs/{alpine.blobs[0].digest}")
        assert resp.status == 503
        assert "connection pool exhausted" in (await resp.json())["errors"][0]["message"]
    finally:
        for task in downloads:
            task.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)
