"""Blob uploads into hosted repositories: sessions that outlive a request, a restart and the
replica that started them.

A session's record (its repository and how many bytes arrived) is in the metadata store
(`Uploads`), so any process sharing it can continue the upload; its bytes so far are a file
in the data dir's `uploads/` directory, named by the session id, so every process sharing
the data dir reads them (on S3 storage the data dir is each host's own: an upload then
continues on the host that started it, or starts over). The file is never served: the
closing `PUT` streams it through the store's verified writer, which publishes the blob only
when its bytes hash to the digest the client named. A session idle for `ttl` expires: its
record by the store's expiry, its file by `sweep` (the server runs it on a schedule; `mirror
gc` too).

Chunks append at the recorded size: a chunk whose `Content-Range` starts elsewhere is refused
416, and bytes past the recorded size (a write that died before its record) are cut off
first, so the file always holds exactly what the record says arrived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import BinaryIO

from mirror import errors
from mirror.errors import RegistryError
from mirror.meta.store import MetaStoreError, Upload, Uploads
from mirror.reference import Digest
from mirror.storage import ContentStore, IntegrityError

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
# How often a serving mirror looks for expired uploads' files.
SWEEP_INTERVAL_SECONDS = 600.0
_ID_BYTES = 16
_ID_LENGTH = 2 * _ID_BYTES
_READ_SIZE = 1 << 20


class UploadSessions:
    """Start, append to, finish, cancel and sweep the upload sessions of one data dir."""

    def __init__(
        self,
        store: ContentStore,
        meta: Uploads,
        data_dir: Path,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._meta = meta
        self._dir = data_dir / UPLOADS_DIR
        self._ttl = ttl
        self._clock = clock

    async def start(self, repo: str) -> Upload:
        """A new, empty session for hosted `repo`."""
        upload = Upload(secrets.token_hex(_ID_BYTES), repo, 0)
        await asyncio.to_thread(self._create, upload.id)
        await self._put(upload)
        return upload

    async def find(self, repo: str, upload_id: str) -> Upload:
        """The live session `upload_id` of `repo`; BLOB_UPLOAD_UNKNOWN for any other (a
        malformed id, another repository's, finished, cancelled or expired)."""
        unknown = RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:80]})
        if len(upload_id) != _ID_LENGTH or not _is_hex(upload_id):
            raise unknown
        upload = await self._get(upload_id)
        if upload is None or upload.repo != repo or not self._path(upload_id).exists():
            raise unknown
        return upload

    async def append(
        self, upload: Upload, chunks: AsyncIterable[bytes], start: int | None = None
    ) -> Upload:
        """Add a chunk at the end of what arrived (`start`, from `Content-Range`, must be
        exactly there: RANGE_INVALID otherwise); the session as it is now."""
        if start is not None and start != upload.size:
            raise RegistryError(
                errors.RANGE_NOT_SATISFIABLE,
                f"chunk starts at {start}, but {upload.size} bytes have arrived",
                headers=_range_headers(upload.size),
            )
        size = upload.size
        with await asyncio.to_thread(self._open_at, upload) as file:
            async for chunk in chunks:
                await asyncio.to_thread(file.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(_durable, file)
        grown = Upload(upload.id, upload.repo, size)
        await self._put(grown)
        return grown

    async def finish(self, upload: Upload, digest: Digest, last_chunk: AsyncIterable[bytes]) -> int:
        """Close the session with its last chunk (perhaps empty) and publish the blob under
        `digest`; its size. DIGEST_INVALID (session cancelled) when the bytes hash to
        something else. A session with nothing yet streams the chunk straight to the
        store; otherwise the chunk joins the file, which is then streamed there."""
        writer = self._store.blob_writer(digest)
        try:
            if upload.size == 0:
                async for chunk in last_chunk:
                    await writer.write(chunk)
            else:
                upload = await self.append(upload, last_chunk)
                with await asyncio.to_thread(self._path(upload.id).open, "rb") as file:
                    while chunk := await asyncio.to_thread(file.read, _READ_SIZE):
                        await writer.write(chunk)
            await writer.commit()
        except IntegrityError as exc:
            await self.cancel(upload)
            raise RegistryError(
                errors.DIGEST_INVALID,
                f"the uploaded bytes do not match {digest}",
                detail={
                    "digest": str(digest),
                    **({"actual": str(exc.actual)} if exc.actual else {}),
                },
            ) from None
        finally:
            await writer.abort()  # a no-op after the commit
        size = writer.written
        await self.cancel(upload)  # done: the record and the file go
        return size

    async def cancel(self, upload: Upload) -> None:
        """End the session and remove its bytes (idempotent)."""
        try:
            await self._meta.delete_upload(upload.id)
        except MetaStoreError as exc:
            raise _unavailable(exc) from None
        await asyncio.to_thread(self._path(upload.id).unlink, missing_ok=True)

    async def sweep(self) -> int:
        """Remove the files of sessions that no longer exist (expired, or whose record was
        lost) once idle for `ttl`; how many went. A file younger than that may belong to a
        session being started elsewhere, so it stays."""
        removed = 0
        cutoff = self._clock() - self._ttl
        for path in await asyncio.to_thread(self._idle_files, cutoff):
            if await self._meta.get_upload(path.name) is None:
                await asyncio.to_thread(path.unlink, missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d expired blob upload(s)", removed)
        return removed

    async def run_forever(self, interval: float = SWEEP_INTERVAL_SECONDS) -> None:
        while True:
            try:
                await self.sweep()
            except (OSError, MetaStoreError) as exc:
                log.warning("sweeping expired uploads failed: %s", exc)
            await asyncio.sleep(interval)

    # --- files and records

    def _path(self, upload_id: str) -> Path:
        return self._dir / upload_id

    def _create(self, upload_id: str) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._path(upload_id).touch(exist_ok=False)

    def _open_at(self, upload: Upload) -> BinaryIO:
        """The session's file for appending at its recorded size (anything after it cut)."""
        file = self._path(upload.id).open("r+b")
        file.truncate(upload.size)
        file.seek(upload.size)
        return file

    def _idle_files(self, cutoff: float) -> list[Path]:
        if not self._dir.is_dir():
            return []
        return [
            path
            for path in self._dir.iterdir()
            if len(path.name) == _ID_LENGTH and path.stat().st_mtime < cutoff
        ]

    async def _get(self, upload_id: str) -> Upload | None:
        try:
            return await self._meta.get_upload(upload_id)
        except MetaStoreError as exc:
            raise _unavailable(exc) from None

    async def _put(self, upload: Upload) -> None:
        try:
            await self._meta.put_upload(upload, self._ttl)
        except MetaStoreError as exc:
            raise _unavailable(exc) from None


def upload_range(size: int) -> str:
    """The `Range` header of a session holding `size` bytes: `0-<last byte>`, as the spec
    writes it (no `bytes=`); `0-0` for an empty one, as distribution answers."""
    return f"0-{max(size - 1, 0)}"


def _range_headers(size: int) -> dict[str, str]:
    return {"Range": upload_range(size)}


def _durable(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _unavailable(exc: MetaStoreError) -> RegistryError:
    log.warning("upload sessions unavailable: %s", exc)
    return RegistryError(errors.STORE_UNAVAILABLE, "upload sessions are unavailable; retry later")
