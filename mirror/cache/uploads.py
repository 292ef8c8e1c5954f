"""Blob uploads into hosted repositories: sessions that outlive a request, a restart and the
replica that started them.

A session's record (its repository and how many bytes arrived) is in the metadata store
(`Uploads`), so any process sharing it can continue the upload; its bytes so far are in the
store's upload spool (`ContentStore.uploads`), which keeps them where the processes sharing
the store reach them: the data dir's `uploads/` on the filesystem, the bucket on S3 (so an
upload continues on any replica). The bytes are never served: the closing `PUT` streams them
through the store's verified writer, which publishes the blob only when its bytes hash to
the digest the client named. A session idle for `ttl` expires: its record by the store's
expiry, its bytes by `sweep` (the server runs it on a schedule; `mirror gc` too).

Chunks append at the recorded size: a chunk whose `Content-Range` starts elsewhere is refused
416, and bytes past the recorded size (a write that died before its record) no longer count,
so the spool always reads exactly what the record says arrived.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterable, Callable

from mirror import errors, observe
from mirror.errors import RegistryError
from mirror.meta.store import MetaStoreError, Upload, Uploads
from mirror.reference import Digest
from mirror.storage import ContentStore, IntegrityError

log = logging.getLogger(__name__)

# How often a serving mirror looks for expired uploads' bytes.
SWEEP_INTERVAL_SECONDS = 600.0
_ID_BYTES = 16
_ID_LENGTH = 2 * _ID_BYTES


class UploadSessions:
    """Start, append to, finish, cancel and sweep the upload sessions of one store."""

    def __init__(
        self,
        store: ContentStore,
        meta: Uploads,
        *,
        ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._spool = store.uploads
        self._meta = meta
        self._ttl = ttl
        self._clock = clock

    async def start(self, repo: str) -> Upload:
        """A new, empty session for hosted `repo`."""
        upload = Upload(secrets.token_hex(_ID_BYTES), repo, 0)
        await self._spool.create(upload.id)
        await self._put(upload)
        return upload

    async def find(self, repo: str, upload_id: str) -> Upload:
        """The live session `upload_id` of `repo`; BLOB_UPLOAD_UNKNOWN for any other (a
        malformed id, another repository's, finished, cancelled or expired, or one whose
        bytes this process cannot reach)."""
        unknown = RegistryError(errors.BLOB_UPLOAD_UNKNOWN, detail={"uuid": upload_id[:80]})
        if len(upload_id) != _ID_LENGTH or not _is_hex(upload_id):
            raise unknown
        upload = await self._get(upload_id)
        if upload is None or upload.repo != repo or not await self._spool.holds(upload_id):
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
        added = await self._spool.append(upload.id, upload.size, chunks)
        grown = Upload(upload.id, upload.repo, upload.size + added)
        await self._put(grown)
        return grown

    async def finish(self, upload: Upload, digest: Digest, last_chunk: AsyncIterable[bytes]) -> int:
        """Close the session with its last chunk (perhaps empty) and publish the blob under
        `digest`; its size. DIGEST_INVALID (session cancelled) when the bytes hash to
        something else; BLOB_UPLOAD_UNKNOWN (session cancelled) when its bytes went
        meanwhile. A session with nothing yet streams the chunk straight to the store;
        otherwise the chunk joins the spool, which is then streamed there."""
        writer = self._store.blob_writer(digest)
        try:
            if upload.size == 0:
                async for chunk in last_chunk:
                    await writer.write(chunk)
            else:
                upload = await self.append(upload, last_chunk)
                async for chunk in self._spool.read(upload.id, upload.size):
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
        except FileNotFoundError:
            await self.cancel(upload)
            raise RegistryError(
                errors.BLOB_UPLOAD_UNKNOWN,
                "the upload's bytes are gone (it expired); start it again",
                detail={"uuid": upload.id},
            ) from None
        finally:
            await writer.abort()  # a no-op after the commit
        size = writer.written
        await self.cancel(upload)  # done: the record and the bytes go
        observe.hosted_pushed("blob")
        return size

    async def cancel(self, upload: Upload) -> None:
        """End the session and remove its bytes (idempotent)."""
        try:
            await self._meta.delete_upload(upload.id)
        except MetaStoreError as exc:
            raise _unavailable(exc) from None
        await self._spool.remove(upload.id)

    async def sweep(self) -> int:
        """Remove the bytes of sessions that no longer exist (expired, or whose record was
        lost) once idle for `ttl`; how many went. Bytes younger than that may belong to a
        session being started elsewhere, so they stay."""
        removed = 0
        cutoff = self._clock() - self._ttl
        for upload_id in await asyncio.to_thread(self._spool.idle, cutoff):
            if await self._meta.get_upload(upload_id) is None:
                await self._spool.remove(upload_id)
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

    # --- records

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


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _unavailable(exc: MetaStoreError) -> RegistryError:
    log.warning("upload sessions unavailable: %s", exc)
    return RegistryError(errors.STORE_UNAVAILABLE, "upload sessions are unavailable; retry later")
