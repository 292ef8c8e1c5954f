"""The content store's contract, for every implementation: what the caches, eviction, gc,
`mirror ls`, export and import rely on. Another store joins by adding a factory to
`STORES` (a fresh, empty store, and a second handle on it as another process opens it)."""

from __future__ import annotations

import asyncio
import hashlib
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mirror.reference import Digest
from mirror.storage import ContentStore, IntegrityError, SpoolProgress, StoredManifest
from mirror.storage.filesystem import FilesystemStore
from mirror.wiring import close_store
from testkit.waiting import wait_until
from tests.s3_fixtures import s3_store


@dataclass(frozen=True)
class Backend:
    """A store under test: `open()` gives a handle on the same content each time (one per
    process sharing it); `STORES[name](root)` is the same store, for another process."""

    open: Callable[[], ContentStore]
    name: str
    root: Path


def _filesystem(tmp_path: Path) -> Backend:
    return Backend(lambda: FilesystemStore(tmp_path / "data"), "filesystem", tmp_path)


def _s3(tmp_path: Path) -> Backend:
    """On the session's SeaweedFS (the `seaweed` fixture points the AWS environment at it,
    for this process and the ones it starts); every handle shares the data dir, as the
    processes of one host do."""
    return Backend(lambda: s3_store(tmp_path), "s3", tmp_path)


STORES: dict[str, Callable[[Path], Backend]] = {"filesystem": _filesystem, "s3": _s3}


@pytest.fixture(params=sorted(STORES))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "s3":
        request.getfixturevalue("seaweed")
    factory: Callable[[Path], Backend] = STORES[request.param]
    made = factory(tmp_path)
    opened: list[ContentStore] = []

    def open_store() -> ContentStore:
        opened.append(made.open())
        return opened[-1]

    yield Backend(open_store, made.name, made.root)
    for store in opened:
        await close_store(store)


@pytest.fixture
def store(backend: Backend) -> ContentStore:
    return backend.open()


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


DATA = b"layer bytes " * 10_000
DIGEST = digest_of(DATA)


async def put(store: ContentStore, data: bytes) -> Digest:
    digest = digest_of(data)
    writer = store.blob_writer(digest)
    await writer.write(data)
    await writer.commit(len(data))
    return digest


@contextmanager
def few_descriptors_left(left: int) -> Iterator[None]:
    """Lower this process's open-file limit to `left` more than it has open, meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(list(Path("/proc/self/fd").iterdir()))
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + left, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def nothing_visible(store: ContentStore, digest: Digest) -> bool:
    """No blob, no listing, no leftover temp file."""
    return (
        await store.blob_size(digest) is None
        and await store.open_blob(digest) is None
        and all(o.digest != digest for o in store.objects("blob"))
        and store.stale_temp_files(time.time() + 60) == []
    )


# --- the verified writer ---------------------------------------------------------------------


async def test_a_blob_is_visible_once_its_writer_commits_matching_bytes(
    store: ContentStore,
) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA[:1000])
    await writer.write(DATA[1000:])
    assert writer.written == len(DATA) and writer.digest == DIGEST
    assert await store.blob_size(DIGEST) is None, "nothing visible before the commit"
    await writer.commit(len(DATA))
    assert await store.blob_size(DIGEST) == len(DATA)
    blob = await store.open_blob(DIGEST)
    assert blob is not None and (blob.digest, blob.size) == (DIGEST, len(DATA))
    with blob.open() as fh:
        assert fh.read() == DATA


async def test_writes_made_before_the_last_one_returned_land_in_the_order_made(
    store: ContentStore,
) -> None:
    writer = store.blob_writer(DIGEST)
    pieces = [DATA[start : start + 7000] for start in range(0, len(DATA), 7000)]
    await asyncio.gather(*(writer.write(piece) for piece in pieces))
    assert writer.written == len(DATA)
    await writer.commit(len(DATA))
    blob = await store.open_blob(DIGEST)
    assert blob is not None
    with blob.open() as fh:
        assert fh.read() == DATA


@pytest.mark.parametrize(
    ("written", "expected_size"),
    [(DATA[:-1] + b"!", len(DATA)), (DATA[:-1], len(DATA)), (DATA, len(DATA) + 1)],
    ids=["wrong bytes", "short", "size mismatch"],
)
async def test_a_mismatch_leaves_nothing_visible(
    store: ContentStore, written: bytes, expected_size: int
) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(written)
    with pytest.raises(IntegrityError):
        await writer.commit(expected_size)
    assert await nothing_visible(store, DIGEST)


async def test_verify_makes_bytes_durable_without_publishing_them(store: ContentStore) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA)
    await writer.verify(len(DATA))
    assert await store.blob_size(DIGEST) is None
    await writer.commit()  # verified already: no size needed again
    assert await store.blob_size(DIGEST) == len(DATA)


async def test_a_failed_verify_discards_the_bytes(store: ContentStore) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA[:100])
    with pytest.raises(IntegrityError):
        await writer.verify()
    await writer.abort()  # harmless after the discard
    assert await nothing_visible(store, DIGEST)


async def test_a_digest_mismatch_names_what_the_bytes_hash_to(store: ContentStore) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(b"other bytes")
    with pytest.raises(IntegrityError) as refused:
        await writer.verify()
    assert refused.value.actual == digest_of(b"other bytes")


async def test_verified_writers_hold_no_descriptors_until_they_commit(store: ContentStore) -> None:
    """`mirror import` verifies every blob of a bundle before it commits any."""
    blobs = [b"blob %d" % number for number in range(200)]
    with few_descriptors_left(50):
        writers = []
        for data in blobs:
            writer = store.blob_writer(digest_of(data))
            await writer.write(data)
            await writer.verify(len(data))
            writers.append(writer)
        for writer in writers:
            await writer.commit()
    assert store.measure()["blob"].objects == len(blobs)


async def test_abort_discards_and_is_idempotent_and_a_commit_outlives_it(
    store: ContentStore,
) -> None:
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA)
    await writer.abort()
    await writer.abort()
    assert await nothing_visible(store, DIGEST)
    committed = store.blob_writer(DIGEST)
    await committed.write(DATA)
    await committed.commit()
    await committed.abort()
    assert await store.blob_size(DIGEST) == len(DATA)


async def test_concurrent_writers_of_one_digest_publish_it_once(store: ContentStore) -> None:
    writers = [store.blob_writer(DIGEST) for _ in range(3)]
    for start in range(0, len(DATA), 7000):
        for writer in writers[:2]:
            await writer.write(DATA[start : start + 7000])
    await writers[2].write(b"not the blob")
    results = await asyncio.gather(*(w.commit() for w in writers), return_exceptions=True)
    assert results[:2] == [None, None]
    assert isinstance(results[2], IntegrityError)
    assert [o.digest for o in store.objects("blob")] == [DIGEST]
    assert store.measure()["blob"].objects == 1
    blob = await store.open_blob(DIGEST)
    assert blob is not None
    with blob.open() as fh:
        assert fh.read() == DATA


# --- looking up ----------------------------------------------------------------------------


async def test_lookups_of_content_never_stored_answer_none(store: ContentStore) -> None:
    """Not an error: a miss is the common case (the caller fetches it upstream)."""
    absent = digest_of(b"never stored")
    assert await store.blob_size(absent) is None
    assert await store.open_blob(absent) is None
    assert not await store.has_manifest(absent)
    assert await store.read_manifest(absent) is None


async def test_many_lookups_run_at_once(store: ContentStore) -> None:
    """Every request of a server looks something up: they overlap, and each gets its own
    answer."""
    stored = [await put(store, b"blob %d" % number) for number in range(20)]
    absent = [digest_of(b"absent %d" % number) for number in range(20)]
    sizes = await asyncio.gather(*(store.blob_size(d) for d in [*stored, *absent]))
    assert sizes == [len(b"blob %d" % number) for number in range(20)] + [None] * 20
    manifests = await asyncio.gather(*(store.has_manifest(d) for d in stored))
    assert manifests == [False] * 20


# --- reading -------------------------------------------------------------------------------


async def test_a_blob_reads_whole_or_in_ranges(store: ContentStore) -> None:
    await put(store, DATA)
    blob = await store.open_blob(DIGEST)
    assert blob is not None
    if blob.local_path is not None:
        assert blob.local_path.read_bytes() == DATA

    async def read(start: int = 0, end: int | None = None) -> bytes:
        async with aclosing(blob.chunks(start, end)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    assert await read() == DATA
    assert await read(1000, 2000) == DATA[1000:2000]
    assert await read(len(DATA) - 5) == DATA[-5:]


async def test_a_reader_keeps_a_removed_blob_until_done(store: ContentStore) -> None:
    await put(store, DATA)
    blob = await store.open_blob(DIGEST)
    assert blob is not None
    with blob.open() as fh:
        assert store.remove("blob", DIGEST) == len(DATA)
        assert fh.read() == DATA
    assert await store.open_blob(DIGEST) is None
    with pytest.raises(FileNotFoundError):
        blob.open()
    with pytest.raises(FileNotFoundError):
        async with aclosing(blob.chunks()) as chunks:
            await anext(chunks)


# --- manifests -----------------------------------------------------------------------------


async def test_manifests_keep_their_exact_bytes_and_media_type(backend: Backend) -> None:
    store = backend.open()
    data = b'{"schemaVersion": 2,  "layers": []}'
    manifest = StoredManifest(data, "application/vnd.oci.image.manifest.v1+json", digest_of(data))
    assert not await store.has_manifest(manifest.digest)
    assert await store.read_manifest(manifest.digest) is None
    await store.write_manifest(manifest)
    assert await store.has_manifest(manifest.digest)
    assert await store.read_manifest(manifest.digest) == manifest
    assert await backend.open().read_manifest(manifest.digest) == manifest, "as another process"


async def test_a_stored_manifest_keeps_its_first_media_type(store: ContentStore) -> None:
    data = b'{"schemaVersion": 2, "layers": []}'
    first = StoredManifest(data, "application/vnd.oci.image.manifest.v1+json", digest_of(data))
    await store.write_manifest(first)
    other = "application/vnd.docker.distribution.manifest.v2+json"
    await store.write_manifest(StoredManifest(data, other, first.digest))
    assert await store.read_manifest(first.digest) == first
    assert store.measure()["manifest"].objects == 1


async def test_a_manifest_that_does_not_match_its_digest_is_refused(store: ContentStore) -> None:
    wrong = StoredManifest(b"{}", "application/json", digest_of(b"[]"))
    with pytest.raises(IntegrityError):
        await store.write_manifest(wrong)
    assert not await store.has_manifest(wrong.digest)
    assert list(store.objects("manifest")) == []


# --- listing, removing, usage ----------------------------------------------------------------


async def test_objects_are_listed_removed_and_measured_by_kind(store: ContentStore) -> None:
    other = b"another blob"
    await put(store, DATA)
    await put(store, other)
    manifest = StoredManifest(b"{}", "application/json", digest_of(b"{}"))
    await store.write_manifest(manifest)
    before = time.time()

    blobs = {o.digest: o for o in store.objects("blob")}
    assert {d: (o.kind, o.size) for d, o in blobs.items()} == {
        DIGEST: ("blob", len(DATA)),
        digest_of(other): ("blob", len(other)),
    }
    assert all(o.mtime <= before + 1 for o in blobs.values())
    (listed,) = store.objects("manifest")
    assert (listed.kind, listed.digest, listed.size) == ("manifest", manifest.digest, 2)
    usage = store.usage
    assert (usage["blob"].objects, usage["blob"].bytes) == (2, len(DATA) + len(other))
    assert (usage["manifest"].objects, usage["manifest"].bytes) == (1, 2)

    assert store.remove("blob", DIGEST) == len(DATA)
    assert store.remove("blob", DIGEST) == 0
    assert store.remove("manifest", manifest.digest) == 2
    assert not await store.has_manifest(manifest.digest)
    assert await store.read_manifest(manifest.digest) is None
    assert [o.digest for o in store.objects("blob")] == [digest_of(other)]
    assert (store.usage["blob"].objects, store.usage["blob"].bytes) == (1, len(other))
    measured = store.measure()
    assert (measured["blob"].objects, measured["blob"].bytes) == (1, len(other))
    assert measured["manifest"].objects == 0


async def test_the_processes_sharing_a_store_count_what_it_holds_together(
    backend: Backend,
) -> None:
    """What one process commits or removes, the others count too (a server's workers see
    one size, and evict by it); a measure in any of them sets the count for all."""
    first, second = backend.open(), backend.open()
    other = b"another blob"
    await put(first, DATA)
    await put(second, other)
    await put(second, other)  # already held: not counted twice
    manifest = StoredManifest(b"{}", "application/json", digest_of(b"{}"))
    await second.write_manifest(manifest)
    for store in (first, second, backend.open()):
        usage = store.usage
        assert (usage["blob"].objects, usage["blob"].bytes) == (2, len(DATA) + len(other))
        assert (usage["manifest"].objects, usage["manifest"].bytes) == (1, 2)
    assert second.remove("blob", DIGEST) == len(DATA)
    assert (first.usage["blob"].objects, first.usage["blob"].bytes) == (1, len(other))
    first.measure()
    assert (second.usage["blob"].objects, second.usage["blob"].bytes) == (1, len(other))


def test_the_store_has_room_and_takes_writes(store: ContentStore) -> None:
    assert store.free_bytes() > 0
    store.check_writable()
    assert store.location


# --- leftovers -------------------------------------------------------------------------------


async def test_leftovers_of_unfinished_writes_are_found_and_removed(backend: Backend) -> None:
    writer = backend.open().blob_writer(DIGEST)
    await writer.write(DATA[:100])
    store = backend.open()
    assert store.stale_temp_files(time.time() + 60) == [], "a live writer's file is no leftover"
    assert store.remove_temp_files() == 0
    await writer.abort()
    dies_mid_write(backend, DATA[:100])
    assert store.stale_temp_files(time.time() - 3600) == [], "too young to be stale"
    (leftover,) = store.stale_temp_files(time.time() + 60)
    assert leftover.size == 100
    store.remove_temp_file(leftover)
    assert store.stale_temp_files(time.time() + 60) == []
    assert await nothing_visible(store, DIGEST)


async def test_a_start_leaves_a_verified_write_and_a_live_download_alone(
    backend: Backend,
) -> None:
    """Another process (an import, a prefetch, a second server) is mid-way: its files stay;
    a dead download's go at once."""
    verified = backend.open().blob_writer(DIGEST)  # an import verifies, commits later
    await verified.write(DATA)
    await verified.verify(len(DATA))
    live = backend.open().spool(digest_of(b"live"))
    assert live.claim()
    await live.writer(4).write(b"li")
    dead = backend.open().spool(digest_of(b"dead"))
    assert dead.claim()
    await dead.writer(4).write(b"de")
    dead.release()  # as the kernel does for a killed holder (its files stay)

    assert backend.open().remove_temp_files() == 1, "the dead download's bytes"
    await verified.commit()
    assert await backend.open().blob_size(DIGEST) == len(DATA)
    assert live.in_progress()
    live.release()


def dies_mid_write(backend: Backend, data: bytes) -> None:
    """A process writes `data` to a blob writer and is killed before it commits."""
    code = (
        "import asyncio, os, sys\n"
        "from mirror.reference import Digest\n"
        "from tests.test_storage_contract import STORES\n"
        "from pathlib import Path\n"
        "store = STORES[sys.argv[1]](Path(sys.argv[2])).open()\n"
        "writer = store.blob_writer(Digest.parse(sys.argv[3]))\n"
        "asyncio.run(writer.write(sys.stdin.buffer.read()))\n"
        "os._exit(0)\n"
    )
    name, root = backend.name, str(backend.root)
    args = [sys.executable, "-c", code, name, root, str(DIGEST)]
    subprocess.run(args, input=data, check=True, timeout=60)


# --- one download per digest: the spool ------------------------------------------------------


async def test_one_process_at_a_time_holds_a_downloads_claim(backend: Backend) -> None:
    first, second = backend.open().spool(DIGEST), backend.open().spool(DIGEST)
    assert not first.in_progress()
    assert first.claim()
    assert not second.claim()
    assert first.in_progress() and second.in_progress()
    first.release()
    first.release()
    assert not second.in_progress()
    assert second.claim()
    second.release()


async def test_followers_stream_the_spool_and_see_the_commit(backend: Backend) -> None:
    leader, follower = backend.open(), backend.open()
    spool = leader.spool(DIGEST)
    assert spool.claim()
    seen: list[SpoolProgress] = []

    async def follow() -> None:
        async with aclosing(follower.spool(DIGEST).watch()) as progress:
            async for state in progress:
                seen.append(state)

    watching = asyncio.create_task(follow())
    writer = spool.writer(len(DATA))
    await writer.write(DATA[:5000])
    reader = follower.spool(DIGEST).open(committed=False)
    assert reader is not None
    assert reader.read(1000, 100) == DATA[1000:1100], "bytes readable as they arrive"
    reader.close()
    await wait_until(
        lambda: seen and seen[-1].written >= 5000, within=5, message="the follower saw 5000 bytes"
    )
    assert await follower.blob_size(DIGEST) is None
    await writer.write(DATA[5000:])
    await writer.commit(len(DATA))
    spool.release()
    await asyncio.wait_for(watching, 5)

    assert seen[0].announced and seen[0].size == len(DATA)
    assert [s.written for s in seen] == sorted(s.written for s in seen)
    assert seen[-1] == SpoolProgress(True, len(DATA), len(DATA), True)
    assert all(not s.committed for s in seen[:-1])
    assert await follower.blob_size(DIGEST) == len(DATA)
    committed = follower.spool(DIGEST).open(committed=True)
    assert committed is not None and committed.read(0, 10) == DATA[:10]
    committed.close()
    assert follower.stale_temp_files(time.time() + 60) == []


async def test_a_download_given_up_ends_its_followers_watch_uncommitted(
    backend: Backend,
) -> None:
    leader, follower = backend.open(), backend.open()
    spool = leader.spool(DIGEST)
    assert spool.claim()
    writer = spool.writer(None)
    await writer.write(DATA[:10])

    seen: list[SpoolProgress] = []

    async def follow() -> None:
        async with aclosing(follower.spool(DIGEST).watch()) as progress:
            async for state in progress:
                seen.append(state)

    watching = asyncio.create_task(follow())
    await wait_until(lambda: seen, within=5, message="the follower is watching the download")
    assert leader.stale_temp_files(time.time() + 60) == [], "a live spool is no leftover"
    await writer.abort()
    spool.release()
    await asyncio.wait_for(watching, 5)
    assert not any(state.committed for state in seen)
    assert await nothing_visible(follower, DIGEST)
    assert follower.spool(DIGEST).open(committed=False) is None
