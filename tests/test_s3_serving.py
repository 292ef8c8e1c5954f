"""A mirror serving from S3 storage, beyond pulls: the janitor that aborts orphaned uploads
while serving, `s3_redirect`, `/readyz`, and the degraded modes (Redis down: what the
bucket holds is still served; the bucket down: the hot cache is still served and misses
stream through uncached, verified). Real SeaweedFS and Redis throughout; a test that stops
one starts its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from mirror import config
from mirror.cache.janitor import LOCK, Janitor
from mirror.meta.redis import RedisMetaStore
from testkit.fakeupstream import FakeRegistry, Fault, Manifest, make_image, random_layer
from testkit.seaweed import SeaweedFS
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import Client, StartMirror, answered
from tests.meta_fixtures import RedisServer, forget_prefix, unique_prefix
from tests.s3_fixtures import (
    BUCKET,
    blob_head,
    blob_key,
    pending_uploads,
    s3_settings,
    s3_store,
)
from tests.scrape import delta, scrape

KB = 1024
UNTIL = 30.0  # seconds a test waits for the server's background work or a restart to show


def image(seed: int) -> Manifest:
    return make_image(layers=[random_layer(64 * KB, seed=seed)], seed=seed)


async def readiness(mirror: Client) -> tuple[int, dict[str, str]]:
    resp = await mirror.get("/readyz")
    body = await resp.json()
    return resp.status, body["checks"]


async def ready(mirror: Client) -> bool:
    status, _ = await readiness(mirror)
    return status == 200


# --- the janitor -----------------------------------------------------------------------------


async def test_a_serving_mirror_aborts_an_upload_orphaned_in_the_bucket(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """A replica killed mid-download leaves its multipart upload; any serving replica
    aborts it once older than `s3_orphan_grace`, and counts it."""
    mirror = await start_mirror(
        upstream.url,
        **s3_settings(tmp_path, redis_url, redis_key_prefix=unique_prefix(), s3_orphan_grace=1),
    )
    before = await scrape(mirror)
    seaweed.client().create_multipart_upload(Bucket=BUCKET, Key=blob_key(tmp_path, "ab" * 32))
    await wait_until(
        lambda: pending_uploads(seaweed, tmp_path) == [],
        within=UNTIL,
        message="the janitor aborted the orphaned upload",
        interval=0.2,
    )
    after = await scrape(mirror)
    assert delta(after, before, "mirror_s3_orphan_uploads_aborted_total") == 1


async def test_one_janitor_pass_runs_at_a_time_across_replicas(
    seaweed: SeaweedFS, redis_url: str, tmp_path: Path
) -> None:
    """While another replica's pass holds the lock in the metadata store, a janitor leaves
    the bucket alone; once it is free, its pass aborts the orphan."""
    prefix = unique_prefix()
    meta = await RedisMetaStore.open(redis_url, prefix)
    store = s3_store(tmp_path)
    try:
        seaweed.client().create_multipart_upload(Bucket=BUCKET, Key=blob_key(tmp_path, "cd" * 32))
        janitor = Janitor(store, meta, grace=1, clock=lambda: time.time() + 60)
        other = await meta.try_lock(LOCK, 60)
        assert other is not None
        assert await janitor.sweep() is None, "another replica's pass is running"
        assert len(pending_uploads(seaweed, tmp_path)) == 1
        await meta.unlock(LOCK, other)
        assert await janitor.sweep() == 1
        assert pending_uploads(seaweed, tmp_path) == []
    finally:
        await store.close()
        await meta.close()
        await forget_prefix(redis_url, prefix)


# --- s3_redirect -----------------------------------------------------------------------------


async def test_with_s3_redirect_a_blob_get_is_sent_to_the_bucket_after_the_repository_check(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    manifest = image(1)
    (layer,) = manifest.layers
    upstream.push_image("team/app", "1", manifest)
    settings = s3_settings(tmp_path, redis_url, redis_key_prefix=unique_prefix(), s3_redirect=True)
    first = await start_mirror(upstream.url, **settings)
    await pull_like_docker(first, "team/app", "1")  # misses: streamed while downloaded
    path = f"/v2/team/app/blobs/{layer.digest}"
    hot = await first.get(path, allow_redirects=False)
    assert hot.status == 200, "a blob in this replica's hot cache is sent from its disk"
    assert await hot.read() == layer.data

    second = await start_mirror(upstream.url, data_dir=str(tmp_path / "replica2"), **settings)
    upstream.reset_counts()
    redirect = await second.get(path, allow_redirects=False)
    assert redirect.status == 307
    assert redirect.headers["Docker-Content-Digest"] == layer.digest
    assert redirect.headers["Cache-Control"] == "no-store"
    location = redirect.headers["Location"]
    assert location.startswith(f"{seaweed.endpoint}/{BUCKET}/{blob_key(tmp_path, layer.digest)}?")
    assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["600"]

    # A real client follows the redirect to the bucket, whole and by range.
    async with http.get(second.make_url(path)) as resp:
        assert resp.status == 200
        assert str(resp.url).startswith(seaweed.endpoint)
        assert await resp.read() == layer.data
    ranged = {"Range": "bytes=1000-1999"}
    async with http.get(second.make_url(path), headers=ranged) as resp:
        assert resp.status == 206
        assert await resp.read() == layer.data[1000:2000]

    head = await second.head(path)
    assert head.status == 200 and "Location" not in head.headers, "HEAD is the mirror's"
    assert int(head.headers["Content-Length"]) == layer.size
    assert answered(upstream, kind="blob") == 0

    # Content reaches a repository only through one that holds it: no URL for the others.
    elsewhere = await second.get(f"/v2/team/other/blobs/{layer.digest}", allow_redirects=False)
    assert elsewhere.status == 404
    assert (await elsewhere.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_s3_redirect_needs_s3_storage() -> None:
    with pytest.raises(config.ConfigError, match="s3_redirect"):
        config.load(overrides={"s3_redirect": True}, environ={})


# --- /readyz ---------------------------------------------------------------------------------


async def test_readyz_on_s3_is_ready_with_the_bucket_and_redis_and_names_whichever_is_down(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    private_seaweed: SeaweedFS,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    settings = s3_settings(tmp_path, redis_server.url, s3_endpoint=private_seaweed.endpoint)
    mirror = await start_mirror(upstream.url, **settings)
    assert await readiness(mirror) == (200, {"data_dir": "ok", "meta_store": "ok"})

    await redis_server.stop()
    status, checks = await readiness(mirror)
    assert status == 503
    assert checks["data_dir"] == "ok" and checks["meta_store"].startswith("failed: ")
    await redis_server.start()
    await wait_until(lambda: ready(mirror), within=UNTIL, message="ready with Redis back")

    await asyncio.to_thread(private_seaweed.stop)
    status, checks = await readiness(mirror)
    assert status == 503
    assert checks["meta_store"] == "ok" and checks["data_dir"].startswith("failed: ")
    await asyncio.to_thread(private_seaweed.start)
    await wait_until(lambda: ready(mirror), within=UNTIL, message="ready with the bucket back")


# --- degraded modes --------------------------------------------------------------------------


async def test_with_redis_down_what_the_bucket_holds_is_still_served(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    seaweed: SeaweedFS,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Tags are asked upstream and repositories confirmed with HEADs, but no cached byte is
    fetched again; a cold blob is downloaded by the replica asked (each coordinates its
    own downloads) and lands in the bucket; with Redis back, all is as before."""
    cached, cold = image(2), image(3)
    upstream.push_image("team/cached", "1", cached)
    upstream.push_image("team/cold", "1", cold)
    settings: dict[str, Any] = s3_settings(tmp_path, redis_server.url)
    first = await start_mirror(upstream.url, **settings)
    second = await start_mirror(upstream.url, data_dir=str(tmp_path / "replica2"), **settings)
    await pull_like_docker(first, "team/cached", "1")

    await redis_server.stop()
    upstream.reset_counts()
    await pull_like_docker(second, "team/cached", "1")  # from the bucket: not in its hot cache
    assert answered(upstream, kind="blob", method="GET") == 0
    assert answered(upstream, kind="manifest", method="GET") == 0
    await pull_like_docker(second, "team/cold", "1")
    for blob in cold.blobs:
        assert blob_head(seaweed, tmp_path, blob.digest) is not None

    await redis_server.start()
    await wait_until(lambda: ready(first), within=UNTIL, message="ready with Redis back")
    upstream.reset_counts()
    await pull_like_docker(first, "team/cold", "1")
    assert answered(upstream, kind="blob", method="GET") == 0


async def test_with_the_bucket_down_hot_blobs_are_served_and_misses_stream_through_verified(
    start_mirror: StartMirror,
    upstream: FakeRegistry,
    private_seaweed: SeaweedFS,
    redis_url: str,
    tmp_path: Path,
) -> None:
    warm, new = image(4), image(5)
    upstream.push_image("team/warm", "1", warm)
    upstream.push_image("team/new", "1", new)
    bad = random_layer(64 * KB, seed=6)
    upstream.push_blob("team/new", bad)
    settings = s3_settings(tmp_path, redis_url, redis_key_prefix=unique_prefix())
    mirror = await start_mirror(upstream.url, s3_endpoint=private_seaweed.endpoint, **settings)
    await pull_like_docker(mirror, "team/warm", "1")

    await asyncio.to_thread(private_seaweed.stop)
    status, checks = await readiness(mirror)
    assert status == 503 and checks["data_dir"].startswith("failed: ")
    upstream.reset_counts()
    await pull_like_docker(mirror, "team/warm", "1")  # tag, manifest and blobs at hand
    assert answered(upstream, kind="blob") == 0

    before = await scrape(mirror)
    await pull_like_docker(mirror, "team/new", "1")  # manifest and blobs served uncached
    after = await scrape(mirror)
    assert delta(after, before, "mirror_cache_passthrough_total") == len(new.blobs)
    upstream.add_fault(Fault("corrupt", server="cdn"))
    resp = await mirror.get(f"/v2/team/new/blobs/{bad.digest}")
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # cut before its last byte: never a complete bad transfer

    await asyncio.to_thread(private_seaweed.start)
    await wait_until(lambda: ready(mirror), within=UNTIL, message="ready with the bucket back")
    for blob in new.blobs:
        assert blob_head(private_seaweed, tmp_path, blob.digest) is None, "nothing kept"
    (layer,) = new.layers

    async def stored_again() -> bool:
        resp = await mirror.get(f"/v2/team/new/blobs/{layer.digest}")
        assert await resp.read() == layer.data
        return blob_head(private_seaweed, tmp_path, layer.digest) is not None

    # Misses pass through for a few seconds after the last failed lookup, then are cached.
    await wait_until(stored_again, within=UNTIL, message="misses cached again", interval=0.5)
