"""Blobs: served from the store when cached, otherwise downloaded once and streamed.

A miss starts one `Download` per digest. It runs as its own task (so it finishes and fills
the cache even if the client that started it goes away), writes into a temp file, and every
client of that digest, the first included, streams from that growing file. The last byte
of any response is held back until the download is verified and committed, so a client can
never complete a transfer of bad bytes: on failure every reader is aborted instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from mirror import errors, observe
from mirror.cache.access import AccessRecorder
from mirror.cache.store import DownloadClaim, FilesystemStore, IntegrityError
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
# How often a process following another process's download looks at its file.
FOLLOW_POLL_SECONDS = 0.005


class DownloadLost(UpstreamError):
    """The download this process was following (in another process) ended without
    committing; the client may be answered by a fresh attempt if it got no bytes yet."""


class NoRoom(RegistryError):
    """The upstream announced a blob larger than the data dir's free space: nothing was
    written, and the client has had no byte yet."""


# Errors of a full disk (or of a quota): the mirror cannot store, but can still serve.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

# How often "streaming without caching" is logged while the disk stays nearly full.
PASSTHROUGH_LOG_SECONDS = 60.0


class BlobBody(Protocol):
    """A blob body that is not (yet) a file in the store: what a miss is answered from."""

    digest: Digest
    size: int | None

    def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]: ...

    async def release(self) -> None:
        """Let go of anything held for a reader that never read (idempotent)."""


@dataclass(frozen=True)
class CachedBlob:
    path: Path
    size: int


class State(Enum):
    STARTING = "starting"  # waiting for the upstream's response headers
    RUNNING = "running"  # bytes are arriving
    COMMITTED = "committed"  # verified and visible in the store
    FAILED = "failed"


class Download:
    """One upstream download of one blob, shared by every client that wants it."""

    def __init__(self, digest: Digest, final_path: Path) -> None:
        self.digest = digest
        self.size: int | None = None
        self.written = 0
        self.state = State.STARTING
        self.error: RegistryError | None = None
        self._final_path = final_path
        self._tmp_path: Path | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- producer side (the download task) ------------------------------------------------

    def started(self, tmp_path: Path, size: int | None) -> None:
        self._tmp_path = tmp_path
        self.size = size
        self.state = State.RUNNING
        self._notify()

    def progressed(self, written: int) -> None:
        self.written = written
        self._notify()

    def committed(self) -> None:
        self.state = State.COMMITTED
        self._notify()

    def failed(self, error: RegistryError) -> None:
        self.state = State.FAILED
        self.error = error
        self._notify()

    # --- consumer side (client responses) -------------------------------------------------

    async def wait_started(self) -> None:
        """Wait for the upstream's answer; raises its error if it refused or failed."""
        while self.state is State.STARTING:
            await self._changed.wait()
        if self.state is State.FAILED:
            assert self.error is not None
            raise self.error

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Yield bytes [start, end) as they arrive (end None: to the end of the blob).

        Raises the download's error if it fails; the caller must then abort its response.
        """
        fd = self._open()
        observe.waiter_joined()
        try:
            pos = start
            stop = end if end is not None else self.size
            while True:
                changed = self._changed
                if self.state is State.FAILED:
                    assert self.error is not None
                    raise self.error
                committed = self.state is State.COMMITTED
                limit = self.written
                if stop is not None:
                    # Hold back the response's last byte until the blob is verified.
                    limit = min(limit, stop if committed else stop - 1)
                if pos < limit:
                    data = os.pread(fd, min(limit - pos, READ_CHUNK_BYTES), pos)
                    if not data:
                        raise RegistryError(errors.INTERNAL, "blob file shorter than expected")
                    pos += len(data)
                    yield data
                    continue
                if committed:
                    return
                await changed.wait()
        finally:
            observe.waiter_left()
            os.close(fd)

    async def release(self) -> None:
        """Nothing to let go: the download belongs to no single reader."""

    def _open(self) -> int:
        """Open whichever file holds the bytes now. (A download in another process may have
        committed, renaming its file, before this process noticed.)"""
        if self.state is State.FAILED or (
            self._tmp_path is None and self.state is not State.COMMITTED
        ):
            assert self.error is not None
            raise self.error
        if self.state is not State.COMMITTED and self._tmp_path is not None:
            try:
                return os.open(self._tmp_path, os.O_RDONLY)
            except FileNotFoundError:
                pass
        try:
            return os.open(self._final_path, os.O_RDONLY)
        except FileNotFoundError:
            raise DownloadLost(
                errors.UPSTREAM_BAD_GATEWAY, "the download of this blob failed"
            ) from None


class Passthrough:
    """A miss streamed from the upstream to one client without being cached: the data dir is
    nearly full. Verified all the same: the last chunk is held back until the digest (and
    size) match, so a client never completes a transfer of bad bytes."""

    def __init__(self, repo: UpstreamRepo, digest: Digest) -> None:
        self.digest = digest
        self.size: int | None = None
        self._repo = repo
        self._stack = AsyncExitStack()
        self._chunks: AsyncGenerator[bytes, None] | None = None

    async def open(self) -> None:
        stream = await self._stack.enter_async_context(
            self._repo.upstream.open_blob(self._repo.name, self.digest)
        )
        self.size = stream.size
        self._stream = stream

    async def release(self) -> None:
        await self._stack.aclose()

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of the blob; the whole blob is read (and hashed) regardless."""
        upstream = self._repo.upstream
        hasher = hashlib.new(self.digest.algorithm)
        position, received = 0, 0
        held: bytes = b""
        try:
            async for chunk in self._stream.chunks:
                hasher.update(chunk)
                received += len(chunk)
                observe.upstream_received(upstream.host, len(chunk))
                if held:
                    if piece := _slice(held, position, start, end):
                        yield piece
                    position += len(held)
                held = chunk
            if hasher.hexdigest() != self.digest.hex or (
                self.size is not None and received != self.size
            ):
                error = UpstreamError(
                    errors.UPSTREAM_BAD_GATEWAY,
                    f"upstream {upstream.name} sent bytes that do not match {self.digest}",
                )
                observe.upstream_failed(upstream.host, str(error))
                raise error
            if piece := _slice(held, position, start, end):
                yield piece
        finally:
            await self.release()


def _slice(chunk: bytes, position: int, start: int, end: int | None) -> bytes:
    """The part of `chunk` (which begins at `position` in the blob) inside [start, end)."""
    low = max(start - position, 0)
    high = len(chunk) if end is None else min(end - position, len(chunk))
    return chunk[low:high] if high > low else b""


class BlobCache:
    """The blob side of the pull-through cache."""

    def __init__(
        self,
        store: FilesystemStore,
        access: AccessRecorder,
        *,
        offline: bool = False,
        min_free_space: int = 0,
    ) -> None:
        self._store = store
        self._access = access
        self._offline = offline
        self._min_free_space = min_free_space
        self._passthrough_logged = 0.0
        self._downloads: dict[Digest, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def cached(self, repo: UpstreamRepo, digest: Digest) -> CachedBlob | None:
        """The blob, if the store holds it. Blobs are stored once whichever upstream they
        came from: a digest names the same bytes everywhere."""
        size = self._store.blob_size(digest)
        if size is None:
            return None
        observe.cache_lookup("blob", "hit")
        self._access.touch(str(digest), repo)
        return CachedBlob(self._store.blob_path(digest), size)

    async def size(self, repo: UpstreamRepo, digest: Digest) -> int | None:
        """The blob's size without downloading it: from the cache, from a download in
        flight, or from an upstream HEAD."""
        if (size := self._store.blob_size(digest)) is not None:
            return size
        download = self._downloads.get(digest)
        if download is not None and download.state is not State.FAILED:
            await download.wait_started()
            if download.size is not None:
                observe.cache_lookup("blob", "coalesced")
                return download.size
        self._refuse_when_offline()
        observe.cache_lookup("blob", "miss")
        return await repo.upstream.head_blob(repo.name, digest)

    async def download(self, repo: UpstreamRepo, digest: Digest) -> BlobBody:
        """The download of `digest`, started (size known): joined if one is in flight in
        this process, followed if another process on this host has it, else begun; or,
        when the disk is nearly full (or the blob is larger than the free space and
        `min_free_space` is set), the upstream's body passed through uncached."""
        if digest not in self._downloads and self._disk_nearly_full():
            self._refuse_when_offline()
            observe.cache_lookup("blob", "miss")
            return await self._pass_through(repo, digest)
        for attempt in range(2):
            download = self._join_or_start(repo, digest)
            try:
                await download.wait_started()
            except DownloadLost:
                if attempt == 0:
                    continue  # the other process gave up before any bytes: try ourselves
                raise
            except NoRoom:
                if self._min_free_space <= 0:  # passing through is turned off
                    raise
                return await self._pass_through(repo, digest)
            self._access.touch(str(digest), repo)
            return download
        raise AssertionError("unreachable")

    async def _pass_through(self, repo: UpstreamRepo, digest: Digest) -> Passthrough:
        observe.passed_through()
        passthrough = Passthrough(repo, digest)
        await passthrough.open()
        self._access.touch(str(digest), repo)
        return passthrough

    def _join_or_start(self, repo: UpstreamRepo, digest: Digest) -> Download:
        download = self._downloads.get(digest)
        if download is not None:
            observe.cache_lookup("blob", "coalesced")
            return download
        self._refuse_when_offline()
        download = Download(digest, self._store.blob_path(digest))
        claim = self._store.claim_download(digest)
        # Following another process's download costs the upstream nothing: coalesced too.
        observe.cache_lookup("blob", "miss" if claim else "coalesced")
        work = self._run(repo, download, claim) if claim else self._follow(download)
        self._downloads[digest] = download
        task = asyncio.create_task(work, name=f"download {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    def _disk_nearly_full(self) -> bool:
        if self._min_free_space <= 0:
            return False
        free = self._store.free_bytes()
        if free >= self._min_free_space:
            return False
        if time.monotonic() - self._passthrough_logged > PASSTHROUGH_LOG_SECONDS:
            self._passthrough_logged = time.monotonic()
            log.warning(
                "only %d bytes free in %s (min_free_space %d): streaming misses without "
                "caching them",
                free,
                self._store.root,
                self._min_free_space,
            )
        return True

    def _refuse_when_offline(self) -> None:
        if self._offline:
            raise RegistryError(
                errors.BLOB_UNKNOWN, "blob not in the cache, and the mirror is offline"
            )

    async def close(self) -> None:
        """Abort every download (shutdown): readers are cut off, temp files removed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow(self, download: Download) -> None:
        """Mirror the state of a download another process on this host is doing, from its
        files: the size it announced, the bytes written so far, the committed blob."""
        digest = download.digest
        data_path, size_path = self._store.download_files(digest)
        try:
            while True:
                if (size := self._store.blob_size(digest)) is not None:
                    if download.state is State.STARTING:
                        download.started(data_path, size)
                    download.progressed(size)
                    download.committed()
                    return
                if download.state is State.STARTING:
                    try:
                        text = size_path.read_text()
                    except FileNotFoundError:
                        pass
                    else:
                        download.started(data_path, int(text) if text.isdigit() else None)
                if download.state is State.RUNNING:
                    try:
                        written = data_path.stat().st_size
                    except FileNotFoundError:
                        written = download.written
                    if written > download.written:
                        download.progressed(written)
                if not self._store.download_in_progress(digest):
                    if self._store.blob_size(digest) is None:
                        download.failed(
                            DownloadLost(
                                errors.UPSTREAM_BAD_GATEWAY,
                                f"the download of {digest} in another worker failed",
                            )
                        )
                        return
                    continue  # committed just now: the next pass sees it
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
        except asyncio.CancelledError:
            download.failed(
                UpstreamError(errors.UPSTREAM_UNAVAILABLE, "the mirror is shutting down")
            )
            raise
        finally:
            self._downloads.pop(digest, None)

    async def _run(self, repo: UpstreamRepo, download: Download, claim: DownloadClaim) -> None:
        digest = download.digest
        upstream = repo.upstream
        observe.download_started()
        try:
            async with upstream.open_blob(repo.name, digest) as stream:
                if stream.size is not None and stream.size > (free := self._store.free_bytes()):
                    # Refused before any byte: the client gets a clean answer, not a cut.
                    log.warning(
                        "%s (%d bytes) does not fit in %s (%d bytes free): not cached",
                        digest,
                        stream.size,
                        self._store.root,
                        free,
                    )
                    raise NoRoom(
                        errors.UPSTREAM_UNAVAILABLE,
                        f"the mirror cannot store this blob ({stream.size} bytes): its data "
                        f"dir has {free} bytes free",
                    )
                try:
                    writer = claim.writer(stream.size)
                except OSError:
                    claim.data_path.unlink(missing_ok=True)  # created before the failure
                    raise
                try:
                    download.started(writer.path, stream.size)
                    async for chunk in stream.chunks:
                        writer.write(chunk)
                        observe.upstream_received(upstream.host, len(chunk))
                        download.progressed(writer.written)
                    await writer.commit(stream.size)
                except BaseException:
                    # Emptied first: clients still reading it keep the file open, and on a
                    # full disk its space is needed now (by the other downloads), not when
                    # they let go.
                    with contextlib.suppress(OSError):
                        os.truncate(writer.path, 0)
                    writer.abort()
                    raise
            download.committed()
        except IntegrityError as exc:
            log.error(
                "upstream integrity error: %s from %s for %s: %s; discarded",
                digest,
                upstream.name,
                repo.name,
                exc,
            )
            error = UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {upstream.name} sent bytes that do not match {digest}",
            )
            observe.upstream_failed(upstream.host, str(error))
            download.failed(error)
        except RegistryError as exc:
            download.failed(exc)
        except asyncio.CancelledError:
            download.failed(
                UpstreamError(errors.UPSTREAM_UNAVAILABLE, "the mirror is shutting down")
            )
            raise
        except OSError as exc:
            # Writing failed (a full disk, most likely): what was written is gone already.
            log.error("storing %s failed, download aborted: %s", digest, exc)
            code = errors.UPSTREAM_UNAVAILABLE if exc.errno in _DISK_FULL else errors.INTERNAL
            download.failed(
                RegistryError(code, f"the mirror could not store this blob: {exc.strerror}")
            )
        except Exception as exc:
            log.exception("download of %s failed unexpectedly", digest)
            download.failed(
                RegistryError(errors.INTERNAL, f"download failed: {type(exc).__name__}")
            )
        finally:
            observe.download_ended()
            claim.release()
            self._downloads.pop(digest, None)
