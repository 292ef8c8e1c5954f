"""The cache's lifecycle: eviction under a size limit, streaming past a full disk, garbage
collection, and the commands that list and remove what it holds."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mirror.cache.eviction import RECENT_SECONDS, Evictor
from mirror.meta import open_meta_store
from mirror.meta.store import Link, MetaStore
from mirror.reference import Digest
from mirror.storage.filesystem import FilesystemStore
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.mirrorproc import run_mirror
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, answered, files_under
from tests.meta_fixtures import RedisServer

KB = 1024


def image(seed: int) -> Manifest:
    """An image of one 64 KiB layer of its own."""
    return make_image(layers=[random_layer(64 * KB, seed=seed)], seed=seed)


def digests(manifest: Manifest) -> set[Digest]:
    return {Digest.parse(manifest.digest)} | {Digest.parse(b.digest) for b in manifest.blobs}


async def cached(data_dir: Path, manifest: Manifest) -> set[str]:
    """Which of the image's objects (manifest, blobs) are in the store, by digest."""
    store = FilesystemStore(data_dir)
    found = set()
    if await store.read_manifest(Digest.parse(manifest.digest)) is not None:
        found.add(manifest.digest)
    for blob in manifest.blobs:
        if await store.blob_size(Digest.parse(blob.digest)) is not None:
            found.add(blob.digest)
    return found


@pytest.fixture
async def meta(data_dir: Path) -> AsyncIterator[MetaStore]:
    """A second handle on the mirror's embedded metadata store, as another process has."""
    store = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    yield store
    await store.close()


# --- eviction -------------------------------------------------------------------------------


async def test_eviction_takes_the_least_recently_used_and_spares_pinned_and_recent_content(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    old, pinned, recent = image(1), image(2), image(3)
    for name, manifest in (("old", old), ("pinned", pinned), ("recent", recent)):
        upstream.push_image(f"team/{name}", "1", manifest)
    clock = FakeClock()
    mirror = await start_mirror(upstream.url, clock=clock)
    await pull_like_docker(mirror, "team/old", "1")
    await pull_like_docker(mirror, "team/pinned", "1")
    clock.advance(1000)
    await pull_like_docker(mirror, "team/recent", "1")
    assert (await mirror.get("/api/status")).status == 200  # writes the access records
    clock.advance(RECENT_SECONDS / 2)

    store = FilesystemStore(data_dir)
    total = sum(o.size for o in [*store.objects("blob"), *store.objects("manifest")])
    old_size = sum(b.size for b in old.blobs) + old.size
    meta = await open_meta_store(redis_url=None, key_prefix="mirror:", data_dir=data_dir)
    try:

        async def pin() -> set[Digest]:
            return digests(pinned)

        limit = total - 1  # one byte over
        evictor = Evictor(
            store,
            meta,
            max_bytes=limit,
            low_water=(total - old_size) / limit,
            pinned=pin,
            clock=clock,
        )
        store.measure()
        assert evictor.over_limit()
        result = await evictor.evict()
        assert result is not None
        assert (result.objects, result.bytes) == (len(old.blobs) + 1, old_size)
        assert result.tag_records == 1  # old's tag record went with its manifest
        tags = {key.repo for key, _ in await meta.list_tags()}
        # The links of what went go too: team/old leaves the catalog.
        for digest in [old.digest, *(b.digest for b in old.blobs)]:
            assert await meta.links_of(digest) == []
        assert await meta.links_of(recent.digest) == [
            Link("docker.io", "team/recent", recent.digest)
        ]
        assert await meta.list_repositories("docker.io") == ["team/pinned", "team/recent"]
    finally:
        await meta.close()
    assert await cached(data_dir, old) == set()
    assert await cached(data_dir, pinned) == {pinned.digest, *(b.digest for b in pinned.blobs)}
    assert await cached(data_dir, recent) == {recent.digest, *(b.digest for b in recent.blobs)}
    assert tags == {"team/pinned", "team/recent"}

    # The evicted image is simply fetched again; the others still cost the upstream nothing.
    upstream.reset_counts()
    await pull_like_docker(mirror, "team/old", "1")
    assert answered(upstream, kind="blob", method="GET") == len(old.blobs)
    upstream.reset_counts()
    await pull_like_docker(mirror, "team/recent", "1")
    assert answered(upstream, kind="blob") == 0


async def test_the_server_evicts_in_the_background_while_pulls_go_on(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    images = [image(seed) for seed in range(10, 18)]
    for index, manifest in enumerate(images):
        upstream.push_image(f"team/app{index}", "1", manifest)
    one = sum(b.size for b in images[0].blobs) + images[0].size
    clock = FakeClock()
    mirror = await start_mirror(
        upstream.url, clock=clock, max_cache_size=4 * one, cache_low_water=0.5
    )
    for index in range(len(images)):
        await pull_like_docker(mirror, f"team/app{index}", "1")
        clock.advance(RECENT_SECONDS * 2)  # each image older than the next

    clock.advance(1000)  # all of it is old now

    async def pulls(indexes: range) -> None:
        for index in indexes:
            await pull_like_docker(mirror, f"team/app{index}", "1")

    store = FilesystemStore(data_dir)

    async def evicted() -> None:
        # The evictor is in the server: only the disk can say it has done its work.
        await wait_until(
            lambda: sum(o.size for o in store.objects("blob")) <= 4 * one,
            within=None,  # bounded below, with the pulls
            message="the cache evicted down to its limit",
            interval=0.05,
        )

    # Pulls go on while the evictor works, and all of them succeed.
    await asyncio.wait_for(asyncio.gather(pulls(range(6, 8)), pulls(range(6, 8)), evicted()), 15)
    await pulls(range(len(images)))  # evicted images are fetched again
    metrics = await (await mirror.get("/metrics")).text()
    assert 'mirror_cache_evictions_total{kind="blob"}' in metrics


# --- a nearly full disk ---------------------------------------------------------------------


async def test_below_the_free_space_floor_misses_stream_through_uncached(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    layer = random_layer(300 * KB, seed=40)
    upstream.push_blob("team/big", layer)
    mirror = await start_mirror(upstream.url, min_free_space="1PB")  # never enough here
    path = f"/v2/team/big/blobs/{layer.digest}"
    for _ in range(2):
        resp = await mirror.get(path)
        assert resp.status == 200
        assert await resp.read() == layer.data
    ranged = await mirror.get(path, headers={"Range": "bytes=1000-1999"})
    assert ranged.status == 206
    assert await ranged.read() == layer.data[1000:2000]
    assert files_under(data_dir / "blobs") == set()
    assert answered(upstream, server="cdn") == 3  # nothing cached: each asks again
    metrics = await (await mirror.get("/metrics")).text()
    assert "mirror_cache_passthrough_total" in metrics


async def test_passed_through_bytes_are_verified_too(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path
) -> None:
    layer = random_layer(300 * KB, seed=41)
    upstream.push_blob("team/big", layer)
    upstream.add_fault(Fault("corrupt", server="cdn"))
    mirror = await start_mirror(upstream.url, min_free_space="1PB")
    resp = await mirror.get(f"/v2/team/big/blobs/{layer.digest}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # cut off before the end: never a complete bad transfer
    assert files_under(data_dir / "blobs") == set()


# --- gc -------------------------------------------------------------------------------------


async def test_gc_removes_orphans_and_leftovers_but_nothing_in_use(
    mirror: Client,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
    meta: MetaStore,
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    orphan = random_layer(32 * KB, seed=50)
    upstream.push_blob("library/alpine", orphan)
    assert (await (await mirror.get(f"/v2/alpine/blobs/{orphan.digest}")).read()) == orphan.data
    # Last used long ago: its access is written now (a status request flushes them, as the
    # server does every few seconds), then forgotten, so only the file's age below counts.
    assert (await mirror.get("/api/status")).status == 200
    await meta.delete_accesses([orphan.digest])
    long_ago = time.time() - 7200
    store = FilesystemStore(data_dir)
    stored = await store.open_blob(Digest.parse(orphan.digest))
    assert stored is not None and stored.local_path is not None
    os.utime(stored.local_path, (long_ago, long_ago))
    crashed = data_dir / "tmp" / "0123abcd.deadbeef.part"
    crashed.write_bytes(b"half a manifest")
    os.utime(crashed, (long_ago, long_ago))
    # A download another process is doing right now: its files stay whatever their age.
    busy = Digest.parse("sha256:" + "b" * 64)
    spool = store.spool(busy)
    assert spool.claim()
    writer = spool.writer(100)
    await writer.write(b"x" * 10)
    spool_files = [p for p in (data_dir / "tmp").iterdir() if busy.hex in p.name]
    assert len(spool_files) == 3  # the claim, the bytes, the size
    for path in spool_files:
        os.utime(path, (long_ago, long_ago))
    (tmp_path / "gc.toml").write_text(f'data_dir = "{data_dir}"\ngc_grace = 3600\n')

    dry = await run_mirror("gc", "--dry-run", "--config", str(tmp_path / "gc.toml"), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove blob {orphan.digest}" in dry.stdout
    assert "would remove temp file 0123abcd.deadbeef.part" in dry.stdout
    assert await store.blob_size(Digest.parse(orphan.digest)) is not None and crashed.exists()

    done = await run_mirror("gc", "--config", str(tmp_path / "gc.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "removed 1 temp files, 1 unreferenced blobs" in done.stdout
    assert await store.blob_size(Digest.parse(orphan.digest)) is None
    assert await meta.links_of(orphan.digest) == []  # its links went with it
    assert await meta.links_of(alpine.layers[0].digest) != []
    assert not crashed.exists()
    assert all(path.exists() for path in spool_files)
    await writer.abort()
    spool.release()
    # Everything the image needs is still there: a warm pull asks the upstream nothing.
    upstream.reset_counts()
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert upstream.requests == []


async def test_gc_drops_records_of_content_that_is_gone(
    mirror: Client, alpine: Manifest, data_dir: Path, tmp_path: Path, meta: MetaStore
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    assert (await mirror.get("/api/status")).status == 200  # access records written
    FilesystemStore(data_dir).remove("manifest", Digest.parse(alpine.digest))
    done = await run_mirror("gc", "--data-dir", str(data_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tag record docker.io/library/alpine:3.19 (its manifest is gone)" in done.stdout
    assert await meta.list_tags() == []
    assert alpine.digest not in await meta.list_accesses()


# --- ls and rm ------------------------------------------------------------------------------


async def test_ls_lists_repositories_and_tags(
    mirror: Client, upstream: FakeRegistry, alpine: Manifest, data_dir: Path, tmp_path: Path
) -> None:
    upstream.push_image("team/app", "1", image(60))
    await pull_like_docker(mirror, "library/alpine", "3.19")
    await pull_like_docker(mirror, "team/app", "1")
    assert (await mirror.get("/api/status")).status == 200

    listing = await run_mirror("ls", "--data-dir", str(data_dir), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAGS", "SIZE", "LAST", "PULLED"]
    assert [line.split()[0] for line in lines[1:]] == [
        "docker.io/library/alpine",
        "docker.io/team/app",
    ]

    tags = await run_mirror("ls", "alpine", "--json", "--data-dir", str(data_dir), cwd=tmp_path)
    (row,) = json.loads(tags.stdout)
    assert row["repository"] == "docker.io/library/alpine"
    assert (row["tag"], row["digest"], row["complete"]) == ("3.19", alpine.digest, True)
    assert row["size"] == alpine.size + sum(b.size for b in alpine.blobs)
    assert row["last_access"] is not None


async def test_rm_removes_an_image_and_the_next_pull_fetches_it_again(
    mirror: Client,
    upstream: FakeRegistry,
    alpine: Manifest,
    data_dir: Path,
    tmp_path: Path,
    meta: MetaStore,
) -> None:
    await pull_like_docker(mirror, "library/alpine", "3.19")
    removed = await run_mirror("rm", "alpine:3.19", "--data-dir", str(data_dir), cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert f"removed manifest {alpine.digest}" in removed.stdout
    assert await meta.list_tags() == []
    assert await meta.list_repositories("docker.io") == []
    # Its last tag gone, the repository has no links: served again once confirmed.
    for digest in [alpine.digest, *(b.digest for b in alpine.blobs)]:
        assert await meta.links_of(digest) == []
    assert await cached(data_dir, alpine) == {b.digest for b in alpine.blobs}  # blobs: for gc

    again = await run_mirror("rm", "alpine:3.19", "--data-dir", str(data_dir), cwd=tmp_path)
    assert again.returncode == 1
    assert "not in the cache" in again.stderr

    upstream.reset_counts()
    await pull_like_docker(mirror, "library/alpine", "3.19")  # the mirror's hot tag is gone?
    assert await cached(data_dir, alpine) == {alpine.digest, *(b.digest for b in alpine.blobs)}


async def test_nothing_is_evicted_while_the_metadata_store_fails(
    start_mirror: StartMirror, upstream: FakeRegistry, data_dir: Path, redis_server: RedisServer
) -> None:
    """Without the store, pinned images and recent use are unknown: evicting then could
    remove exactly what must stay."""
    upstream.push_image("team/app", "1", image(70))
    clock = FakeClock()
    mirror = await start_mirror(upstream.url, clock=clock, redis_url=redis_server.url)
    await pull_like_docker(mirror, "team/app", "1")
    clock.advance(1000)
    meta = await open_meta_store(
        redis_url=redis_server.url, key_prefix="mirror:", data_dir=data_dir
    )
    try:

        async def pin() -> set[Digest]:
            return set()

        store = FilesystemStore(data_dir)
        store.measure()
        evictor = Evictor(store, meta, max_bytes=1, low_water=0.5, pinned=pin, clock=clock)
        await redis_server.stop()
        result = await evictor.evict()
    finally:
        await meta.close()
    assert result is not None and result.objects == 0
    assert await cached(data_dir, image(70)) == {
        image(70).digest,
        *(b.digest for b in image(70).blobs),
    }
