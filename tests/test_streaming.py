"""Blobs on a miss: streamed while they download, one download however many clients ask,
and never a completed response with bad bytes."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import aiohttp
import pytest

from mirror.cache.download import RECENT_BYTES
from testkit.fakeupstream import Blob, FakeRegistry, Fault, random_layer
from testkit.waiting import wait_until
from tests.clients import cached_blobs
from tests.conftest import Client, StartMirror, answered, files_under
from tests.transfers import Transfer, Transfers

MB = 1024 * 1024


async def read_digest(mirror: Client, path: str) -> str:
    """GET a blob and hash it as it streams (20 clients x 50 MB would not fit in a list)."""
    digest = hashlib.sha256()
    async with mirror.get(path) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(MB):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def slow_blob(
    upstream: FakeRegistry, repo: str, *, seed: int, chunk_delay: float, size: int = 2 * MB
) -> tuple[Blob, str]:
    """Push a blob whose CDN download is slowed, so a test can act while it is in flight;
    returns it and its path on the mirror."""
    blob = random_layer(size, seed=seed)
    upstream.push_blob(repo, blob)
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=chunk_delay))
    return blob, f"/v2/{repo}/blobs/{blob.digest}"


@pytest.fixture
def big_blob(upstream: FakeRegistry) -> Blob:
    blob = random_layer(50 * MB, seed=50)
    upstream.push_blob("library/big", blob)
    return blob


@pytest.mark.slow
async def test_twenty_concurrent_clients_of_a_cold_blob_cause_one_upstream_download(
    mirror: Client, upstream: FakeRegistry, big_blob: Blob
) -> None:
    # Slow the CDN down a little so all twenty really overlap with the download.
    upstream.add_fault(Fault("slow", server="cdn", chunk_delay=0.001))
    path = f"/v2/library/big/blobs/{big_blob.digest}"
    digests = await asyncio.gather(*(read_digest(mirror, path) for _ in range(20)))
    assert digests == [big_blob.digest] * 20
    assert answered(upstream, kind="blob", method="GET") == 1
    assert upstream.count(server="cdn") == 1


async def test_first_bytes_reach_the_client_before_the_download_ends(
    mirror: Client, upstream: FakeRegistry, data_dir: Path
) -> None:
    blob, path = slow_blob(upstream, "library/slow", seed=2, chunk_delay=0.03)
    async with mirror.get(path) as resp:
        first = await resp.content.readany()
        assert first and blob.data.startswith(first)
        assert cached_blobs(data_dir) == set(), "bytes must stream before the blob is committed"
        rest = await resp.read()
    assert first + rest == blob.data
    assert len(cached_blobs(data_dir)) == 1


async def test_download_finishes_and_is_cached_when_its_client_goes_away(
    mirror: Client, upstream: FakeRegistry, data_dir: Path
) -> None:
    blob, path = slow_blob(upstream, "library/left", seed=4, chunk_delay=0.01)
    resp = await mirror.get(path)
    await resp.content.readany()
    resp.close()
    await wait_until(
        lambda: len(cached_blobs(data_dir)) == 1, within=10, message="the blob is committed"
    )
    upstream.reset_counts()
    assert await read_digest(mirror, path) == blob.digest
    assert upstream.requests == []


async def test_head_of_a_blob_in_flight_needs_no_upstream_request(
    mirror: Client, upstream: FakeRegistry
) -> None:
    blob, path = slow_blob(upstream, "library/inflight", seed=5, chunk_delay=0.02)
    async with mirror.get(path) as resp:
        await resp.content.readany()
        head = await mirror.head(path)
        assert head.status == 200
        assert int(head.headers["Content-Length"]) == blob.size
        assert head.headers["Docker-Content-Digest"] == blob.digest
        await resp.read()
    assert answered(upstream, kind="blob", method="HEAD") == 0


@pytest.mark.parametrize("fault", ["corrupt", "truncate"])
async def test_bad_upstream_bytes_abort_every_client_and_are_not_cached(
    mirror: Client, upstream: FakeRegistry, data_dir: Path, fault: str
) -> None:
    blob = random_layer(3 * MB, seed=6)
    upstream.push_blob("library/bad", blob)
    upstream.add_fault(Fault(fault, server="cdn", chunk_delay=0.002))  # type: ignore[arg-type]
    path = f"/v2/library/bad/blobs/{blob.digest}"

    async def pull() -> bytes:
        async with mirror.get(path) as resp:
            assert resp.status == 200
            return await resp.read()

    results = await asyncio.gather(*(pull() for _ in range(3)), return_exceptions=True)
    for result in results:
        assert isinstance(result, aiohttp.ClientPayloadError), result
    assert cached_blobs(data_dir) == set()
    assert files_under(data_dir / "tmp") == set()

    # The fault was one-shot: the next pull downloads afresh and succeeds.
    assert await read_digest(mirror, path) == blob.digest
    assert answered(upstream, kind="blob", method="GET") == 2
    assert len(cached_blobs(data_dir)) == 1


async def test_range_on_a_blob_still_downloading_is_served_from_the_growing_file(
    mirror: Client, upstream: FakeRegistry
) -> None:
    blob, path = slow_blob(upstream, "library/ranged", seed=8, chunk_delay=0.01)
    async with mirror.get(path) as first:
        head = await first.content.readany()
        part = await mirror.get(path, headers={"Range": "bytes=1048576-"})
        assert part.status == 206
        assert part.headers["Content-Range"] == f"bytes {MB}-{blob.size - 1}/{blob.size}"
        assert await part.read() == blob.data[MB:]
        assert head + await first.read() == blob.data
    assert answered(upstream, kind="blob", method="GET") == 1


async def have(records: list[Transfer], count: int) -> None:
    """Wait until every one of `records` has received `count` bytes."""
    await wait_until(
        lambda: all(r.received == count for r in records),
        within=10,
        message=lambda: f"every client has {count} bytes: {records}",
    )


@pytest.mark.parametrize("fault", [None, "corrupt"])
async def test_clients_keeping_up_and_late_get_the_last_byte_only_of_verified_bytes(
    mirror: Client, upstream: FakeRegistry, data_dir: Path, fault: str | None
) -> None:
    """Clients at the edge of the download (served what was just written, from memory)
    and one joining late (behind what is kept in memory: served the spool file) stream the
    blob as it arrives; the last bytes come in one piece, and the last byte reaches them
    once the blob verified, never when it did not."""
    blob = random_layer(3 * RECENT_BYTES, seed=14)
    upstream.push_blob("library/edge", blob)
    if fault is not None:
        upstream.add_fault(Fault("corrupt", server="cdn"))
    tail = upstream.hold_body(blob.size - 64 * 1024, path_contains=blob.digest)
    url = str(mirror.make_url(f"/v2/library/edge/blobs/{blob.digest}"))
    transfers = Transfers(mirror.session)
    try:
        keeping_up = transfers.start(url, 2)
        await have(keeping_up, tail.at)
        late = transfers.start(url)
        await have(late, tail.at)
        tail.release()
        records = await transfers.finish(within=10)
    finally:
        await transfers.close()

    assert answered(upstream, kind="blob", method="GET") == 1
    if fault is None:
        assert [r for r in records if not r.got(blob)] == []
        assert len(cached_blobs(data_dir)) == 1
    else:
        assert [r for r in records if r.complete] == [], "no body completes with bad bytes"
        assert all(r.received < blob.size for r in records)
        assert cached_blobs(data_dir) == set()
        assert files_under(data_dir / "tmp") == set()


async def test_processes_sharing_a_data_dir_download_a_blob_once_and_stream_it_together(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    """Workers of one host (here: two mirror instances on one data dir) elect one
    downloader per blob; the others stream from its file as it grows."""
    first = await start_mirror(upstream.url)
    second = await start_mirror(upstream.url)
    blob, path = slow_blob(upstream, "library/shared", seed=11, chunk_delay=0.005, size=4 * MB)
    digests = await asyncio.gather(
        *(read_digest(mirror, path) for mirror in (first, second) for _ in range(5))
    )
    assert digests == [blob.digest] * 10
    assert answered(upstream, kind="blob", method="GET") == 1


async def test_bad_bytes_abort_the_clients_of_every_process_following_the_download(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    first = await start_mirror(upstream.url)
    second = await start_mirror(upstream.url)
    blob = random_layer(3 * MB, seed=12)
    upstream.push_blob("library/bad", blob)
    # Every download of it brings bad bytes: a process that comes late (its repository check
    # can outlast the first download) and leads its own gets them too.
    upstream.add_fault(Fault("corrupt", server="cdn", chunk_delay=0.01, times=None))
    path = f"/v2/library/bad/blobs/{blob.digest}"

    async def pull(mirror: Client) -> bytes:
        async with mirror.get(path) as resp:
            return await resp.read()

    results = await asyncio.gather(
        *(pull(mirror) for mirror in (first, second) for _ in range(2)), return_exceptions=True
    )
    assert all(isinstance(r, aiohttp.ClientPayloadError) for r in results), results
    assert cached_blobs(data_dir) == set()
    upstream.clear_faults()
    assert await read_digest(second, path) == blob.digest


async def test_a_follower_whose_downloader_fails_before_any_bytes_tries_itself(
    upstream: FakeRegistry, start_mirror: StartMirror
) -> None:
    first = await start_mirror(upstream.url)
    second = await start_mirror(upstream.url)
    blob = random_layer(MB, seed=13)
    upstream.push_blob("library/flaky", blob)
    # The first downloader's storage request fails after a while, before any bytes.
    upstream.add_fault(Fault("status", server="cdn", status=500, delay=0.3))
    path = f"/v2/library/flaky/blobs/{blob.digest}"

    async def follow_once_the_download_started() -> str:
        await upstream.wait_for_request(server="cdn")
        return await read_digest(second, path)

    leader, follower = await asyncio.gather(first.get(path), follow_once_the_download_started())
    assert leader.status == 502
    assert follower == blob.digest
    assert answered(upstream, kind="blob", method="GET") == 2
