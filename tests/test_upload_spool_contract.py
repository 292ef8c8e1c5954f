"""The upload spool's contract, for every store: where a push's bytes so far are kept until
the closing request streams them through the verified writer. Each store is opened twice,
as two processes sharing it open it: on the filesystem two handles on one data dir, on S3
two replicas with data dirs of their own on one bucket prefix (so what one wrote the other
reads from the bucket)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror.storage import ContentStore, UploadSpool
from mirror.storage.filesystem import FilesystemStore
from mirror.storage.s3client import MIN_PART_SIZE
from mirror.wiring import close_store
from testkit.seaweed import SeaweedFS
from tests.s3_fixtures import pending_uploads, s3_store

SESSION = "0123456789abcdef0123456789abcdef"
PIECE = 1 << 16  # what a request body is read in


@dataclass(frozen=True)
class Spools:
    """One store's upload spool as two processes sharing the store see it."""

    here: UploadSpool
    there: UploadSpool
    name: str


STORES: dict[str, Callable[[Path], tuple[ContentStore, ContentStore]]] = {
    "filesystem": lambda root: (FilesystemStore(root / "data"), FilesystemStore(root / "data")),
    "s3": lambda root: (s3_store(root, root / "a"), s3_store(root, root / "b")),
}


@pytest.fixture(params=sorted(STORES))
async def spools(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Spools]:
    if request.param == "s3":
        request.getfixturevalue("seaweed")
    here, there = STORES[request.param](tmp_path)
    yield Spools(here.uploads, there.uploads, request.param)
    await close_store(here)
    await close_store(there)


async def body(data: bytes, *, fail_after: int | None = None) -> AsyncIterator[bytes]:
    """`data` as a request body arrives (in pieces); with `fail_after`, the client goes
    away after that many bytes."""
    for start in range(0, len(data), PIECE):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("the client went away")
        yield data[start : start + PIECE]


async def read(spool: UploadSpool, size: int) -> bytes:
    return b"".join([chunk async for chunk in spool.read(SESSION, size)])


async def test_chunks_read_back_in_order_from_another_process(spools: Spools) -> None:
    await spools.here.create(SESSION)
    assert await spools.here.append(SESSION, 0, body(b"first chunk, ")) == 13
    assert await spools.there.holds(SESSION)
    assert await spools.there.append(SESSION, 13, body(b"second chunk")) == 12

    assert await read(spools.here, 25) == b"first chunk, second chunk"
    assert await read(spools.there, 13) == b"first chunk, ", "only the size asked for"


async def test_an_empty_session_reads_empty_and_an_empty_chunk_adds_nothing(
    spools: Spools,
) -> None:
    await spools.here.create(SESSION)
    assert await spools.here.append(SESSION, 0, body(b"")) == 0
    assert await read(spools.there, 0) == b""


async def test_a_chunk_larger_than_a_part_is_streamed_whole(spools: Spools) -> None:
    data = bytes(range(256)) * ((MIN_PART_SIZE + 3 * PIECE) // 256)
    await spools.here.create(SESSION)
    assert await spools.here.append(SESSION, 0, body(data)) == len(data)
    assert await spools.here.append(SESSION, len(data), body(b"tail")) == 4

    assert await read(spools.there, len(data) + 4) == data + b"tail"


async def test_a_chunk_rewritten_at_the_recorded_size_replaces_what_lay_past_it(
    spools: Spools,
) -> None:
    """A write that died before its record (the size stayed 6) is written again."""
    await spools.here.create(SESSION)
    await spools.here.append(SESSION, 0, body(b"kept, "))
    await spools.here.append(SESSION, 6, body(b"never recorded, and long"))

    assert await spools.there.append(SESSION, 6, body(b"retried")) == 7

    assert await read(spools.here, 13) == b"kept, retried"


async def test_a_chunk_whose_body_fails_counts_for_nothing(spools: Spools) -> None:
    data = b"x" * (MIN_PART_SIZE + 4 * PIECE)
    await spools.here.create(SESSION)
    await spools.here.append(SESSION, 0, body(b"kept"))
    with pytest.raises(ConnectionResetError):
        await spools.here.append(SESSION, 4, body(data, fail_after=MIN_PART_SIZE + PIECE))

    await spools.here.append(SESSION, 4, body(b" and the retry"))

    assert await read(spools.there, 18) == b"kept and the retry"


async def test_reading_bytes_that_are_gone_is_file_not_found(spools: Spools) -> None:
    await spools.here.create(SESSION)
    await spools.here.append(SESSION, 0, body(b"abc"))
    with pytest.raises(FileNotFoundError):
        await read(spools.here, 4)
    await spools.there.remove(SESSION)
    with pytest.raises(FileNotFoundError):
        await read(spools.here, 3)


async def test_removing_is_idempotent_and_leaves_nothing_idle(spools: Spools) -> None:
    await spools.here.create(SESSION)
    await spools.here.append(SESSION, 0, body(b"abc"))
    await spools.here.remove(SESSION)
    await spools.there.remove(SESSION)
    assert spools.here.idle(time.time() + 60) == []


async def test_idle_names_the_sessions_last_written_before_a_time(spools: Spools) -> None:
    await spools.here.create(SESSION)
    await spools.here.append(SESSION, 0, body(b"abc"))
    assert spools.there.idle(time.time() - 60) == []
    assert spools.there.idle(time.time() + 60) == [SESSION]


async def test_s3_a_failed_chunk_leaves_no_pending_upload(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    store = s3_store(tmp_path)
    try:
        data = b"y" * (2 * MIN_PART_SIZE)
        with pytest.raises(ConnectionResetError):
            await store.uploads.append(SESSION, 0, body(data, fail_after=MIN_PART_SIZE + PIECE))
        assert pending_uploads(seaweed, tmp_path) == []
        assert store.uploads.idle(time.time() + 60) == []
    finally:
        await close_store(store)
