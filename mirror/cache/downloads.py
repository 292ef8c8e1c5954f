"""Blob downloads: one per digest across the processes sharing a store, streamed to every
client while the bytes arrive.

A miss starts one `Download` per digest in this process, run as its own task (so it
finishes and fills the cache even if the client that started it goes away). The store's
`Spool` for the digest decides who fetches: the process holding its claim *leads* (reads
the upstream into the spool), every other one *follows* (watches the spool). Either way
every client of the digest, the first included, streams the spool. The last byte of any
response is held back until the download is verified and committed, so a client can never
complete a transfer of bad bytes: on failure every reader is aborted instead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from enum import Enum

from mirror import errors, observe
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage import ContentStore, IntegrityError, Spool, SpoolReader
from mirror.upstream.client import UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
# Errors of a full disk (or of a quota): the mirror cannot store, but can still serve.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DownloadLost(UpstreamError):
    """The download this process was following (led elsewhere) ended without committing;
    the client may be answered by a fresh attempt if it got no bytes yet."""


class NoRoom(RegistryError):
    """The upstream announced a blob larger than the store's free space: nothing was
    written, and the client has had no byte yet."""


class State(Enum):
    STARTING = "starting"  # waiting for the upstream's response headers
    RUNNING = "running"  # bytes are arriving
    COMMITTED = "committed"  # verified and visible in the store
    FAILED = "failed"


class Download:
    """One blob's download as this process sees it, shared by every client that wants it."""

    def __init__(self, digest: Digest, spool: Spool) -> None:
        self.digest = digest
        self.size: int | None = None
        self.written = 0
        self.state = State.STARTING
        self.error: RegistryError | None = None
        # The repository this process fetches it for, None when following another process:
        # a reader for any other repository must hold the blob itself (`BlobCache`).
        self.leads_for: UpstreamRepo | None = None
        self._spool = spool
        self._changed = asyncio.Event()

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
        reader = self._open()
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
                    data = reader.read(pos, min(limit - pos, READ_CHUNK_BYTES))
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
            reader.close()

    async def release(self) -> None:
        """Nothing to let go: the download belongs to no single reader."""

    def _open(self) -> SpoolReader:
        assert self.state is not State.STARTING, "read before wait_started"
        if self.state is State.FAILED:
            assert self.error is not None
            raise self.error
        reader = self._spool.open(committed=self.state is State.COMMITTED)
        if reader is None:
            raise DownloadLost(errors.UPSTREAM_BAD_GATEWAY, "the download of this blob failed")
        return reader

    # --- producer side: state changes -----------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _started(self, size: int | None) -> None:
        self.size = size
        self.state = State.RUNNING
        self._notify()

    def _progressed(self, written: int) -> None:
        self.written = written
        self._notify()

    def _committed(self) -> None:
        self.state = State.COMMITTED
        self._notify()

    def _failed(self, error: RegistryError) -> None:
        self.state = State.FAILED
        self.error = error
        self._notify()

    # --- producer side: following another process's download -----------------------------

    async def follow(self) -> None:
        """Mirror the state of the download the claim holder is doing elsewhere."""
        try:
            async with aclosing(self._spool.watch()) as progress:
                async for seen in progress:
                    if self.state is State.STARTING and seen.announced:
                        self._started(seen.size)
                    if seen.written > self.written:
                        self._progressed(seen.written)
                    if seen.committed:
                        self._committed()
                        return
            self._failed(
                DownloadLost(
                    errors.UPSTREAM_BAD_GATEWAY,
                    f"the download of {self.digest} in another worker failed",
                )
            )
        except asyncio.CancelledError:
            self._failed(_shutting_down())
            raise

    # --- producer side: leading (this process holds the claim) ----------------------------

    async def lead(self, repo: UpstreamRepo, store: ContentStore) -> None:
        """Fetch the blob from the upstream into the spool, then commit it (or fail every
        reader); the claim is given up either way."""
        observe.download_started()
        try:
            await self._transfer(repo, store)
            self._committed()
        except asyncio.CancelledError:
            self._failed(_shutting_down())
            raise
        except Exception as exc:
            self._failed(self._failure(repo, exc))
        finally:
            observe.download_ended()
            self._spool.release()

    async def _transfer(self, repo: UpstreamRepo, store: ContentStore) -> None:
        upstream = repo.upstream
        async with upstream.open_blob(repo.name, self.digest) as stream:
            if stream.size is not None and stream.size > (free := store.free_bytes()):
                # Refused before any byte: the client gets a clean answer, not a cut.
                log.warning(
                    "%s (%d bytes) does not fit in %s (%d bytes free): not cached",
                    self.digest,
                    stream.size,
                    store.location,
                    free,
                )
                raise NoRoom(
                    errors.UPSTREAM_UNAVAILABLE,
                    f"the mirror cannot store this blob ({stream.size} bytes): its data "
                    f"dir has {free} bytes free",
                )
            writer = self._spool.writer(stream.size)
            try:
                self._started(stream.size)
                async for chunk in stream.chunks:
                    await writer.write(chunk)
                    observe.upstream_received(upstream.host, len(chunk))
                    self._progressed(writer.written)
                await writer.commit(stream.size)
            except BaseException:
                # Emptied at once: clients still reading it keep the spool open, and on a
                # full disk its space is needed now (by the other downloads).
                await writer.abort()
                raise

    def _failure(self, repo: UpstreamRepo, exc: Exception) -> RegistryError:
        """What the readers of a failed download are told."""
        upstream = repo.upstream
        if isinstance(exc, IntegrityError):
            log.error(
                "upstream integrity error: %s from %s for %s: %s; discarded",
                self.digest,
                upstream.name,
                repo.name,
                exc,
            )
            error = UpstreamError(
                errors.UPSTREAM_BAD_GATEWAY,
                f"upstream {upstream.name} sent bytes that do not match {self.digest}",
            )
            observe.upstream_failed(upstream.host, str(error))
            return error
        if isinstance(exc, RegistryError):
            return exc
        if isinstance(exc, OSError):
            # Writing failed (a full disk, most likely): what was written is gone already.
            log.error("storing %s failed, download aborted: %s", self.digest, exc)
            code = errors.UPSTREAM_UNAVAILABLE if exc.errno in _DISK_FULL else errors.INTERNAL
            return RegistryError(code, f"the mirror could not store this blob: {exc.strerror}")
        log.exception("download of %s failed unexpectedly", self.digest, exc_info=exc)
        return RegistryError(errors.INTERNAL, f"download failed: {type(exc).__name__}")


def _shutting_down() -> UpstreamError:
    return UpstreamError(errors.UPSTREAM_UNAVAILABLE, "the mirror is shutting down")


class Downloads:
    """This process's downloads, at most one per digest, each run as its own task."""

    def __init__(self, store: ContentStore) -> None:
        self._store = store
        self._running: dict[Digest, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, digest: Digest) -> Download | None:
        return self._running.get(digest)

    def start(self, repo: UpstreamRepo, digest: Digest) -> Download:
        """Begin `digest`'s download here: led when this process gets the store's claim,
        else followed. The caller checked that none is running."""
        spool = self._store.spool(digest)
        download = Download(digest, spool)
        leads = spool.claim()
        download.leads_for = repo if leads else None
        # Following another process's download costs the upstream nothing: coalesced too.
        observe.cache_lookup("blob", "miss" if leads else "coalesced")
        self._running[digest] = download
        task = asyncio.create_task(self._run(download, repo, leads), name=f"download {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    async def _run(self, download: Download, repo: UpstreamRepo, leads: bool) -> None:
        try:
            if leads:
                await download.lead(repo, self._store)
            else:
                await download.follow()
        finally:
            if self._running.get(download.digest) is download:
                del self._running[download.digest]

    async def close(self) -> None:
        """Abort every download (shutdown): readers are cut off, spools emptied."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
