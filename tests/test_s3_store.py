"""What the S3 store adds to the storage contract (which it passes: tests/test_storage_contract.py),
on a real SeaweedFS: part sizes within S3's limits, a multipart upload completed only for
verified bytes, a blob under one part sent in one PUT, ranges read from the bucket, orphaned
uploads aborted, and a mirror serving pulls from the bucket."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest

from mirror import config
from mirror.reference import Digest
from mirror.storage import IntegrityError, StoredManifest
from mirror.storage.s3client import (
    MAX_BLOB_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIB,
    MIN_PART_SIZE,
    S3Location,
    part_size,
)
from mirror.storage.s3store import S3Store
from mirror.storage.s3writer import Uploader
from testkit.fakeupstream import FakeRegistry, make_image, random_layer
from testkit.seaweed import SeaweedFS
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import StartMirror, answered
from tests.relay import GatedRelay
from tests.runcli import run_cli
from tests.s3_fixtures import BUCKET, blob_head, pending_uploads, prefix_of, s3_store

GIB = 1024 * MIB


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


async def put(store: S3Store, data: bytes) -> Digest:
    writer = store.blob_writer(digest_of(data))
    await writer.write(data)
    await writer.commit(len(data))
    return writer.digest


@pytest.fixture
async def store(seaweed: SeaweedFS, tmp_path: Path) -> AsyncIterator[S3Store]:
    opened = s3_store(tmp_path)
    yield opened
    await opened.close()


# --- part sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        5 * MIB,
        MIN_PART_SIZE,
        100 * GIB,
        78 * GIB,
        1024 * GIB,
        MAX_BLOB_SIZE - 1,
        MAX_BLOB_SIZE,
    ],
)
def test_parts_stay_within_the_limits_of_s3(size: int) -> None:
    chosen = part_size(size)
    assert MIN_PART_SIZE <= chosen <= MAX_PART_SIZE, "every part but the last is >= 5 MiB"
    assert math.ceil(size / chosen) <= MAX_PARTS


def test_a_100_gib_blob_takes_12_mib_parts() -> None:
    assert part_size(100 * GIB) == 12 * MIB
    assert math.ceil(100 * GIB / (12 * MIB)) == 8534


def test_a_blob_s3_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError):
        part_size(MAX_BLOB_SIZE + 1)
    with pytest.raises(ValueError):
        part_size(-1)


# --- writing ---------------------------------------------------------------------------------


async def test_a_blob_under_one_part_is_one_put(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    digest = await put(store, b"small blob" * 100)
    found = blob_head(seaweed, tmp_path, digest)
    assert found is not None and found["ContentLength"] == 1000
    assert "-" not in found["ETag"], "a multipart object's ETag ends in -<parts>"


async def test_a_large_blob_is_a_multipart_upload_completed_once_verified(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    data = random_layer(MIN_PART_SIZE * 2 + 12345, seed=7).data
    digest = await put(store, data)
    found = blob_head(seaweed, tmp_path, digest)
    assert found is not None and found["ContentLength"] == len(data)
    assert found["ETag"].strip('"').endswith("-3"), "three parts"
    assert pending_uploads(seaweed, tmp_path) == []
    key = f"{prefix_of(tmp_path)}/blobs/sha256/{digest.hex}"
    body = seaweed.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == data


async def test_bytes_that_differ_from_the_verified_ones_complete_no_upload(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """The upload hashes what it sends: a file changed after its verification (here, bytes
    that never matched) is aborted, leaving no object and no pending upload."""
    data = random_layer(MIN_PART_SIZE + 100, seed=8).data
    digest = digest_of(data)
    spoiled = tmp_path / "spoiled"
    spoiled.write_bytes(data[:-1] + b"!")
    key = f"{prefix_of(tmp_path)}/blobs/sha256/{digest.hex}"
    uploader = Uploader(store._client.get, BUCKET)  # the store's own client
    with pytest.raises(IntegrityError):
        await uploader.upload(spoiled, key, digest, len(data))
    assert blob_head(seaweed, tmp_path, digest) is None
    assert pending_uploads(seaweed, tmp_path) == []
    assert await store.blob_size(digest) is None


async def test_an_orphaned_upload_is_found_and_aborted(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """A leader killed mid-upload leaves its multipart upload; gc (and a start, past the
    grace) aborts it."""
    key = f"{prefix_of(tmp_path)}/blobs/sha256/{'ab' * 32}"
    seaweed.client().create_multipart_upload(Bucket=BUCKET, Key=key)
    assert store.stale_temp_files(time.time() - 3600) == [], "too young to be orphaned"
    (orphan,) = store.stale_temp_files(time.time() + 60)
    assert orphan.name.startswith("s3-upload ") and key in orphan.name
    store.remove_temp_file(orphan)
    assert pending_uploads(seaweed, tmp_path) == []


# --- reading ---------------------------------------------------------------------------------


async def test_a_replica_without_the_blob_at_hand_reads_ranges_from_the_bucket(
    store: S3Store, tmp_path: Path
) -> None:
    data = random_layer(3 * MIB, seed=9).data
    digest = await put(store, data)
    other = s3_store(tmp_path, data_dir=tmp_path / "other")
    try:
        blob = await other.open_blob(digest)
        assert blob is not None and blob.local_path is None and blob.size == len(data)

        async def read(start: int = 0, end: int | None = None) -> bytes:
            async with aclosing(blob.chunks(start, end)) as chunks:
                return b"".join([chunk async for chunk in chunks])

        assert await read(1000, 2000) == data[1000:2000]
        assert await read(len(data) - 5) == data[-5:]
        again = await other.open_blob(digest)
        assert again is not None and again.local_path is None, "a range fills no cache"
        assert await read() == data
        cached = await other.open_blob(digest)
        assert cached is not None and cached.local_path is not None, "a whole read is kept"
        assert cached.local_path.read_bytes() == data
        with blob.open() as fh:
            assert fh.read() == data
    finally:
        await other.close()


async def test_the_processes_of_a_host_keep_its_hot_cache_under_the_limit_together(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    """Two workers on one data dir each admit blobs into the hot cache they share: each
    evicts its own oldest until the two together hold at most `local_cache_size`, give or
    take each one's newest blob (a download's followers may still read it)."""
    size = 100_000
    first, second = (s3_store(tmp_path, local_cache_size=3 * size) for _ in range(2))
    hot = tmp_path / "data" / "s3" / "blobs"
    try:
        for seed in range(4):
            await put(first, random_layer(size, seed=100 + seed).data)
            await put(second, random_layer(size, seed=200 + seed).data)
            held = sum(path.stat().st_size for path in hot.rglob("*") if path.is_file())
            assert held <= 3 * size + size, f"{held} bytes after round {seed}"
        newest = [digest_of(random_layer(size, seed=s).data) for s in (103, 203)]
        assert all((hot / "sha256" / d.hex[:2] / d.hex).is_file() for d in newest)
    finally:
        await first.close()
        await second.close()


async def test_a_blob_removed_from_the_bucket_since_it_was_found_reads_as_a_removed_file(
    store: S3Store, tmp_path: Path
) -> None:
    digest = await put(store, b"a blob on the bucket")
    other = s3_store(tmp_path, data_dir=tmp_path / "other")
    try:
        blob = await other.open_blob(digest)
        assert blob is not None and blob.local_path is None
        await asyncio.to_thread(store.remove, "blob", digest)
        with pytest.raises(FileNotFoundError):
            async with aclosing(blob.chunks()) as chunks:
                await anext(chunks)
        with pytest.raises(FileNotFoundError):
            blob.open()
    finally:
        await other.close()


@pytest.mark.parametrize("lookup", ["blob_size", "open_blob", "has_manifest", "read_manifest"])
async def test_a_lookup_waiting_for_the_bucket_leaves_the_event_loop_free(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path, lookup: str
) -> None:
    """A relay holds the lookup's request to the bucket: the test's own code runs on the
    same event loop meanwhile, and sees the lookup still waiting (a blocking lookup would
    have held the loop until the relay let go)."""
    blob = await put(store, b"a blob on the bucket")
    data = b'{"schemaVersion": 2, "layers": []}'
    manifest = StoredManifest(data, "application/vnd.oci.image.manifest.v1+json", digest_of(data))
    await store.write_manifest(manifest)
    digest = blob if lookup in ("blob_size", "open_blob") else manifest.digest
    with GatedRelay(seaweed.port) as relay:
        location = S3Location.from_settings(
            f"s3://{BUCKET}/{prefix_of(tmp_path)}", relay.endpoint, None, None
        )
        replica = S3Store(location, tmp_path / "replica", 1 << 30)  # nothing at hand
        try:
            relay.close_gate()
            asked = asyncio.create_task(getattr(replica, lookup)(digest))
            await wait_until(relay.held.is_set, within=30, message="the lookup asked the bucket")
            assert not asked.done(), "the lookup held the event loop until the bucket answered"
            relay.open_gate()
            assert await asked, "found"
        finally:
            await replica.close()


# --- configuration -----------------------------------------------------------------------------


def test_s3_storage_needs_redis() -> None:
    with pytest.raises(config.ConfigError, match="redis_url"):
        config.load(overrides={"storage": "s3://bucket/prefix"}, environ={})


def test_storage_is_file_or_an_s3_url() -> None:
    with pytest.raises(config.ConfigError, match="storage"):
        config.load(overrides={"storage": "gs://bucket"}, environ={})


def test_the_endpoint_and_region_default_from_the_aws_environment() -> None:
    environ = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1"}
    location = S3Location.from_settings("s3://b/some/prefix/", None, None, None, environ)
    assert (location.bucket, location.prefix) == ("b", "some/prefix/")
    assert (location.region, location.path_style) == ("eu-west-1", True)
    on_aws = S3Location.from_settings("s3://b", None, None, None, {})
    assert (on_aws.prefix, on_aws.region, on_aws.path_style) == ("", "us-east-1", False)


# --- a mirror on S3 ----------------------------------------------------------------------------


async def test_a_pull_is_stored_in_the_bucket_and_served_from_it_by_another_replica(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
) -> None:
    manifest = make_image(layers=[random_layer(MIN_PART_SIZE + 4096, seed=3)], seed=3)
    upstream.push_image("team/app", "1", manifest)
    settings: dict[str, Any] = {
        "storage": f"s3://{BUCKET}/{prefix_of(tmp_path)}",
        "s3_endpoint": seaweed.endpoint,
        "redis_url": redis_url,
    }
    first = await start_mirror(upstream.url, **settings)
    await pull_like_docker(first, "team/app", "1")
    assert answered(upstream, kind="blob", method="GET") == len(manifest.blobs)

    store = s3_store(tmp_path, data_dir=tmp_path / "look")
    try:
        for blob in manifest.blobs:
            found = await store.open_blob(Digest.parse(blob.digest))
            assert found is not None and found.size == len(blob.data)
            with found.open() as fh:  # read back and verified
                assert fh.read() == blob.data
        assert await store.read_manifest(Digest.parse(manifest.digest)) is not None
    finally:
        await store.close()

    before = len(upstream.requests)
    await pull_like_docker(first, "team/app", "1")  # from its hot cache
    second = await start_mirror(upstream.url, data_dir=str(tmp_path / "replica2"), **settings)
    await pull_like_docker(second, "team/app", "1")  # from the bucket
    assert len(upstream.requests) == before, "no upstream request for a warm pull"


async def test_mirror_gc_aborts_an_orphaned_upload_in_the_bucket(
    seaweed: SeaweedFS, redis_url: str, tmp_path: Path, workdir: Path
) -> None:
    key = f"{prefix_of(tmp_path)}/blobs/sha256/{'cd' * 32}"
    seaweed.client().create_multipart_upload(Bucket=BUCKET, Key=key)
    args = [
        "gc",
        "--storage",
        f"s3://{BUCKET}/{prefix_of(tmp_path)}",
        "--s3-endpoint",
        seaweed.endpoint,
        "--redis-url",
        redis_url,
        "--data-dir",
        str(tmp_path / "data"),
    ]
    env = {**seaweed.env(), "MIRROR_GC_GRACE": "0"}
    done = await asyncio.to_thread(run_cli, *args, env=env, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "s3-upload" in done.stdout
    assert pending_uploads(seaweed, tmp_path) == []


async def test_an_export_from_one_bucket_imports_into_another_and_is_served_offline(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
    workdir: Path,
) -> None:
    manifest = make_image(layers=[random_layer(MIN_PART_SIZE + 1, seed=4)], seed=4)
    upstream.push_image("team/app", "1", manifest)
    source, target = f"{prefix_of(tmp_path)}/a", f"{prefix_of(tmp_path)}/b"
    first = await start_mirror(upstream.url, storage=f"s3://{BUCKET}/{source}", redis_url=redis_url)
    await pull_like_docker(first, "team/app", "1")

    bundle = tmp_path / "bundle.tar"
    env = {**seaweed.env(), "MIRROR_REDIS_URL": redis_url}
    exported = await asyncio.to_thread(
        run_cli,
        *("export", "--storage", f"s3://{BUCKET}/{source}", "--data-dir", str(tmp_path / "e")),
        *("-o", str(bundle), "team/app:1"),
        env=env,
        cwd=workdir,
    )
    assert exported.returncode == 0, exported.stderr
    env["MIRROR_REDIS_KEY_PREFIX"] = "imported:"
    imported = await asyncio.to_thread(
        run_cli,
        *("import", "--storage", f"s3://{BUCKET}/{target}", "--data-dir", str(tmp_path / "i")),
        str(bundle),
        env=env,
        cwd=workdir,
    )
    assert imported.returncode == 0, imported.stderr

    upstream.reset_counts()
    offline = await start_mirror(
        "http://127.0.0.1:9",
        offline=True,
        storage=f"s3://{BUCKET}/{target}",
        redis_url=redis_url,
        redis_key_prefix="imported:",
        data_dir=str(tmp_path / "offline"),
    )
    await pull_like_docker(offline, "team/app", "1")


# --- a download's upload, part by part -----------------------------------------------------------


@pytest.mark.parametrize(
    ("overlapping", "piece_size"),
    [(False, MIB), (True, MIN_PART_SIZE * 3 // 2)],
    ids=["one by one", "overlapping, more than a part each"],
)
async def test_a_download_sends_its_parts_while_it_runs_and_completes_once_verified(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path, overlapping: bool, piece_size: int
) -> None:
    """Whether each write waits for the last one or not, the parts go in order: the upload
    completes only when what it sent hashes to the digest."""
    data = random_layer(4 * MIN_PART_SIZE + 100, seed=10).data
    digest = digest_of(data)
    spool = store.spool(digest)
    assert spool.claim()
    writer = spool.writer(len(data))
    pieces = [data[start : start + piece_size] for start in range(0, len(data), piece_size)]
    if overlapping:
        await asyncio.gather(*(writer.write(piece) for piece in pieces))
    else:
        for piece in pieces:
            await writer.write(piece)
    assert len(pending_uploads(seaweed, tmp_path)) == 1, "parts went before the end"
    assert blob_head(seaweed, tmp_path, digest) is None, "nothing visible before the commit"
    await writer.commit(len(data))
    spool.release()
    found = blob_head(seaweed, tmp_path, digest)
    assert found is not None and found["ContentLength"] == len(data)
    assert pending_uploads(seaweed, tmp_path) == []
    key = f"{prefix_of(tmp_path)}/blobs/sha256/{digest.hex}"
    assert seaweed.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


@pytest.mark.parametrize("spoil", ["wrong bytes", "short"])
async def test_a_download_that_does_not_verify_leaves_no_object_and_no_upload(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path, spoil: str
) -> None:
    data = random_layer(2 * MIN_PART_SIZE + 100, seed=11).data
    digest = digest_of(data)
    written = data[:-1] + b"!" if spoil == "wrong bytes" else data[: 2 * MIN_PART_SIZE + 5]
    spool = store.spool(digest)
    assert spool.claim()
    writer = spool.writer(len(data))
    for start in range(0, len(written), MIB):
        await writer.write(written[start : start + MIB])
    assert len(pending_uploads(seaweed, tmp_path)) == 1
    with pytest.raises(IntegrityError):
        await writer.commit(len(data))
    spool.release()
    assert blob_head(seaweed, tmp_path, digest) is None
    assert pending_uploads(seaweed, tmp_path) == []
    assert await store.blob_size(digest) is None


async def test_a_download_given_up_aborts_its_upload(
    store: S3Store, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    data = random_layer(2 * MIN_PART_SIZE + 100, seed=12).data
    spool = store.spool(digest_of(data))
    assert spool.claim()
    writer = spool.writer(len(data))
    await writer.write(data[: MIN_PART_SIZE + 1])  # a part in flight
    await writer.abort()
    spool.release()
    assert pending_uploads(seaweed, tmp_path) == []
