"""`mirror gc` on hosted repositories, run as the real command beside a serving mirror: it
removes the blobs no manifest of their repository names once past `gc_grace`, with
`--delete-untagged` the manifests no tag reaches too (never an index's children, never a
referrer of a live manifest), and leaves a push in progress whole."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mirror.reference import Digest
from mirror.storage.filesystem import FilesystemStore
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry
from testkit.mirrorproc import Completed, run_mirror
from tests.conftest import Client, StartMirror
from tests.hosted.pushing import (
    HOSTED,
    Blob,
    Pushable,
    image,
    index,
    push,
    push_blob,
    put_manifest,
    start_upload,
)

GRACE = 3600
LONG_AGO = time.time() - 2 * GRACE


@pytest.fixture
def clock() -> FakeClock:
    """The serving mirror's clock: pushes stamped with it start two grace periods ago."""
    return FakeClock(LONG_AGO)


@pytest.fixture
async def mirror(upstream: FakeRegistry, start_mirror: StartMirror, clock: FakeClock) -> Client:
    return await start_mirror(upstream.url, hosted=HOSTED, clock=clock)


async def gc(data_dir: Path, tmp_path: Path, *flags: str) -> Completed:
    """`mirror gc` on the mirror's data dir, its blob files aged past the grace period
    unless written since `LONG_AGO`'s push (the files' times are the filesystem's own)."""
    (tmp_path / "gc.toml").write_text(
        f'data_dir = "{data_dir}"\ngc_grace = {GRACE}\nhosted = ["local/*"]\n'
    )
    done = await run_mirror("gc", *flags, "--config", str(tmp_path / "gc.toml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


async def age(data_dir: Path, *blobs: Blob) -> None:
    """Make the blobs' files as old as the pushes that stored them (`LONG_AGO`)."""
    store = FilesystemStore(data_dir)
    for blob in blobs:
        found = await store.open_blob(Digest.parse(blob.digest))
        assert found is not None and found.local_path is not None
        os.utime(found.local_path, (LONG_AGO, LONG_AGO))


async def stored(data_dir: Path, blob: Blob) -> bool:
    return await FilesystemStore(data_dir).blob_size(Digest.parse(blob.digest)) is not None


async def pulls_whole(mirror: Client, repo: str, manifest: Pushable, reference: str) -> bool:
    got = await mirror.get(f"/v2/{repo}/manifests/{reference}")
    if got.status != 200 or await got.read() != manifest.data:
        return False
    for blob in manifest.blobs:
        resp = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
        if resp.status != 200 or await resp.read() != blob.data:
            return False
    return True


async def test_gc_removes_the_blobs_no_manifest_names_once_past_the_grace_period(
    mirror: Client, clock: FakeClock, data_dir: Path, tmp_path: Path
) -> None:
    kept, deleted = image("kept"), image("deleted")
    await push(mirror, "local/app", kept, "1.0")
    deleted_digest = await push(mirror, "local/app", deleted, "2.0")
    orphan = Blob(b"pushed long ago, never named")
    await push_blob(mirror, "local/app", orphan)
    assert (await mirror.delete(f"/v2/local/app/manifests/{deleted_digest}")).status == 202
    await age(data_dir, *kept.blobs, *deleted.blobs, orphan)

    dry = await gc(data_dir, tmp_path, "--dry-run")

    assert f"would remove hosted blob local/app@{orphan.digest}" in dry.stdout
    assert (
        "would remove 0 temp files, 4 unreferenced blobs, 0 hosted manifests, 4 hosted blobs"
        in (dry.stdout)
    )
    assert await stored(data_dir, orphan)

    done = await gc(data_dir, tmp_path)

    assert "removed 0 temp files, 4 unreferenced blobs, 0 hosted manifests, 4 hosted blobs" in (
        done.stdout
    )
    for blob in (*deleted.blobs, orphan):
        assert not await stored(data_dir, blob)
    assert (await mirror.head(f"/v2/local/app/blobs/{orphan.digest}")).status == 404
    assert await pulls_whole(mirror, "local/app", kept, "1.0")


async def test_a_blob_another_repository_holds_keeps_its_bytes(
    mirror: Client, data_dir: Path, tmp_path: Path
) -> None:
    shared = image("shared")
    digest = await push(mirror, "local/app", shared, "1.0")
    await push(mirror, "local/copy", shared, "1.0")
    assert (await mirror.delete(f"/v2/local/app/manifests/{digest}")).status == 202
    await age(data_dir, *shared.blobs)

    done = await gc(data_dir, tmp_path)

    assert "0 unreferenced blobs, 0 hosted manifests, 3 hosted blobs" in done.stdout
    assert await pulls_whole(mirror, "local/copy", shared, "1.0")
    assert (await mirror.get(f"/v2/local/app/blobs/{shared.blobs[0].digest}")).status == 404


async def test_gc_during_a_push_leaves_it_whole(
    mirror: Client, clock: FakeClock, data_dir: Path, tmp_path: Path
) -> None:
    old = image("old")
    await push(mirror, "local/app", old, "old")
    assert (await mirror.delete("/v2/local/app/manifests/old")).status == 202
    await age(data_dir, *old.blobs)
    clock.now = time.time()  # the push in progress is now
    new = image("new")
    config, first, second = new.blobs
    await push_blob(mirror, "local/app", config)  # uploaded, not yet named by a manifest
    await push_blob(mirror, "local/app", first)
    session = await start_upload(mirror, "local/app")
    half = len(second.data) // 2
    assert (await mirror.patch(session, data=second.data[:half])).status == 202

    done = await gc(data_dir, tmp_path, "--delete-untagged")

    # The old image's leftovers go; nothing of the push in progress does.
    assert "3 unreferenced blobs, 1 hosted manifests, 3 hosted blobs" in done.stdout
    resp = await mirror.put(session, params={"digest": second.digest}, data=second.data[half:])
    assert resp.status == 201, await resp.text()
    assert (await put_manifest(mirror, "local/app", new, "new")).status == 201
    assert await pulls_whole(mirror, "local/app", new, "new")


async def test_a_blob_a_client_was_just_told_is_there_stays_for_its_push(
    mirror: Client, clock: FakeClock, data_dir: Path, tmp_path: Path
) -> None:
    """The client `HEAD`s a blob pushed long ago and unnamed since, skips its upload, and
    pushes the manifest: gc between the two must not take the blob."""
    reused = image("reused")
    for blob in reused.blobs:
        await push_blob(mirror, "local/app", blob)
    await age(data_dir, *reused.blobs)
    clock.now = time.time()
    for blob in reused.blobs:
        assert (await mirror.head(f"/v2/local/app/blobs/{blob.digest}")).status == 200

    done = await gc(data_dir, tmp_path)

    assert "0 hosted blobs" in done.stdout
    assert (await put_manifest(mirror, "local/app", reused, "1.0")).status == 201
    assert await pulls_whole(mirror, "local/app", reused, "1.0")


async def test_delete_untagged_removes_what_no_tag_reaches(
    mirror: Client, data_dir: Path, tmp_path: Path
) -> None:
    tagged = image("tagged")
    tagged_digest = await push(mirror, "local/app", tagged, "1.0")
    children = [image("amd64"), image("arm64")]
    for child in children:
        await push(mirror, "local/app", child, child.digest)
    await push(mirror, "local/app", index(children), "multi")
    untagged = image("untagged")
    await push(mirror, "local/app", untagged, untagged.digest)
    signature = image("signature", extra={"subject": tagged.descriptor()})
    await push(mirror, "local/app", signature, signature.digest)
    orphaned = image("orphaned signature", extra={"subject": untagged.descriptor()})
    await push(mirror, "local/app", orphaned, orphaned.digest)
    everything = [tagged, *children, untagged, signature, orphaned]
    await age(data_dir, *(blob for manifest in everything for blob in manifest.blobs))

    without = await gc(data_dir, tmp_path)
    assert "0 hosted manifests, 0 hosted blobs" in without.stdout

    done = await gc(data_dir, tmp_path, "--delete-untagged")

    for gone in (untagged, orphaned):
        assert f"removed hosted manifest local/app@{gone.digest} (no tag reaches it)" in done.stdout
        resp = await mirror.get(f"/v2/local/app/manifests/{gone.digest}")
        assert resp.status == 404
        for blob in gone.blobs:
            assert not await stored(data_dir, blob)
    assert "2 hosted manifests, 6 hosted blobs" in done.stdout
    assert await pulls_whole(mirror, "local/app", tagged, tagged_digest)
    assert await pulls_whole(mirror, "local/app", signature, signature.digest)
    for child in children:
        assert await pulls_whole(mirror, "local/app", child, child.digest)
    assert (await mirror.get("/v2/local/app/manifests/multi")).status == 200
