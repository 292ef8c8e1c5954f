"""The filesystem writer publishes only the file it wrote: a temp file removed or replaced
under it (by a process that took it for a leftover) is never renamed into place; every
commit fsyncs the directory it renamed into; and a worker forked from a process that wrote
writes on a thread of its own."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
from pathlib import Path

import pytest

from mirror.reference import Digest
from mirror.storage import StoredManifest, filesystem, filewriter
from mirror.storage.filesystem import FilesystemStore

DATA = b"the bytes this writer hashed" * 100
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


def temp_files(root: Path) -> list[Path]:
    return [p for p in (root / "tmp").iterdir() if p.suffix == ".part"]


@pytest.mark.parametrize("what", ["removed", "replaced"])
async def test_a_temp_file_taken_from_its_writer_is_not_committed(
    tmp_path: Path, what: str
) -> None:
    store = FilesystemStore(tmp_path)
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA)
    await writer.verify(len(DATA))
    (temp,) = temp_files(tmp_path)
    temp.unlink()  # another process's clean-up
    if what == "replaced":
        temp.write_bytes(b"someone else's unverified bytes")
    with pytest.raises(FileNotFoundError, match="removed or replaced"):
        await writer.commit()
    assert await store.blob_size(DIGEST) is None
    await writer.abort()
    assert [p.name for p in temp_files(tmp_path)] == ([temp.name] if what == "replaced" else [])


async def test_commits_fsync_the_directory_they_rename_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = filewriter.sync_directory

    def spy(directory: Path) -> None:
        synced.append(directory)
        real(directory)

    monkeypatch.setattr(filewriter, "sync_directory", spy)
    monkeypatch.setattr(filesystem, "sync_directory", spy)
    store = FilesystemStore(tmp_path)
    writer = store.blob_writer(DIGEST)
    await writer.write(DATA)
    await writer.commit(len(DATA))
    blob = await store.open_blob(DIGEST)
    assert blob is not None and synced == [blob.path.parent]

    manifest = b'{"schemaVersion": 2}'
    digest = Digest("sha256", hashlib.sha256(manifest).hexdigest())
    await store.write_manifest(StoredManifest(manifest, "application/json", digest))
    parent = tmp_path / "manifests" / "sha256" / digest.hex[:2]
    assert synced[1:] == [parent, parent], "the type file, then the bytes"


async def write_large_blob(root: Path) -> None:
    """A blob written in pieces large enough to go to the writes' thread."""
    data = b"x" * (2 * filewriter.INLINE_BYTES)
    store = FilesystemStore(root)
    writer = store.blob_writer(Digest("sha256", hashlib.sha256(data).hexdigest()))
    for half in (data[: filewriter.INLINE_BYTES], data[filewriter.INLINE_BYTES :]):
        await writer.write(half)
    await writer.commit(len(data))


def test_a_process_forked_after_writing_writes_on_a_thread_of_its_own(tmp_path: Path) -> None:
    asyncio.run(write_large_blob(tmp_path / "parent"))  # the parent's thread has started
    child = multiprocessing.get_context("fork").Process(
        target=lambda: asyncio.run(write_large_blob(tmp_path / "child"))
    )
    child.start()
    child.join(timeout=30)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0, "the child's writes never ran: it waited for its parent's thread"
