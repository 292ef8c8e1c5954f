"""Hosted content is kept until deleted from its repository or collected: eviction never
removes it, and `mirror gc` removes the bytes of abandoned uploads but keeps a blob pushed
within `gc_grace` that no manifest names yet (tests/hosted/test_gc.py: what gc removes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mirror.cache.eviction import RECENT_SECONDS
from mirror.reference import Digest
from mirror.storage.filesystem import FilesystemStore
from mirror.storage.fileuploads import UPLOADS_DIR
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, make_image, random_layer
from testkit.mirrorproc import run_mirror
from testkit.waiting import wait_until
from tests.clients import pull_like_docker
from tests.conftest import StartMirror
from tests.hosted.pushing import HOSTED, Blob, image, push, push_blob, start_upload

KB = 1024


async def test_gc_keeps_a_just_pushed_blob_and_removes_abandoned_uploads(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path, tmp_path: Path
) -> None:
    long_ago = time.time() - 7200
    # The mirror ran two hours ago: its upload sessions' records have expired since.
    clock = FakeClock(long_ago)
    mirror = await start_mirror(upstream.url, hosted=HOSTED, upload_ttl=600, clock=clock)
    abandoned = await start_upload(mirror, "local/app")
    await mirror.patch(abandoned, data=b"half a layer")
    clock.now = time.time()
    pushed = Blob(b"pushed, its manifest not yet")
    await push_blob(mirror, "local/app", pushed)
    await mirror.close()
    store = FilesystemStore(data_dir)
    stored = await store.open_blob(Digest.parse(pushed.digest))
    assert stored is not None and stored.local_path is not None
    os.utime(stored.local_path, (long_ago, long_ago))
    upload_file = data_dir / UPLOADS_DIR / abandoned.rsplit("/", 1)[1]
    os.utime(upload_file, (long_ago, long_ago))
    (tmp_path / "gc.toml").write_text(
        f'data_dir = "{data_dir}"\ngc_grace = 3600\nupload_ttl = 600\nhosted = ["local/*"]\n'
    )
    done = await run_mirror("gc", "--config", str(tmp_path / "gc.toml"), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert await store.blob_size(Digest.parse(pushed.digest)) == len(pushed.data)
    assert "0 unreferenced blobs" in done.stdout
    assert "1 abandoned uploads" in done.stdout
    assert not upload_file.exists()


async def test_eviction_never_removes_hosted_content(
    upstream: FakeRegistry, start_mirror: StartMirror, data_dir: Path
) -> None:
    cached_images = [
        make_image(layers=[random_layer(64 * KB, seed=seed)], seed=seed) for seed in range(60, 64)
    ]
    for number, manifest in enumerate(cached_images):
        upstream.push_image(f"team/app{number}", "1", manifest)
    one = sum(b.size for b in cached_images[0].blobs) + cached_images[0].size
    clock = FakeClock()
    mirror = await start_mirror(
        upstream.url, hosted=HOSTED, clock=clock, max_cache_size=3 * one, cache_low_water=0.5
    )
    hosted = image("kept", layer_size=64 * KB)
    await push(mirror, "local/app", hosted, "1")
    clock.advance(RECENT_SECONDS * 2)
    for number in range(len(cached_images)):
        await pull_like_docker(mirror, f"team/app{number}", "1")
        clock.advance(RECENT_SECONDS * 2)
    clock.advance(1000)  # all of it is old now, the hosted image the oldest
    store = FilesystemStore(data_dir)

    await wait_until(
        lambda: sum(o.size for o in store.objects("blob")) <= 3 * one,
        within=15,
        message="the cache evicted down to its limit",
        interval=0.05,
    )

    for blob in hosted.blobs:
        assert await store.blob_size(Digest.parse(blob.digest)) == len(blob.data)
    got = await mirror.get("/v2/local/app/manifests/1")
    assert await got.read() == hosted.data
