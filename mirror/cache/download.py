"""One blob's download as this process sees it, shared by every client that wants it.

A `Download` is led (this process holds the spool's claim and reads the bytes from its
`Sources`: the upstream, or in a cluster the leader's relay) or followed (another process of
the host leads; the spool is watched). Either way every client streams the spool through a
`Reader`, and the last byte of any response is held back until the download is verified
and committed, so a client can never complete a transfer of bad bytes: on failure every
reader is aborted instead. `mirror.cache.downloads` keeps this process's downloads.

A leader writes its source's bytes as they arrive (`Spooling`: the writer hashes and writes
on a thread while the next bytes arrive), and keeps its latest writes in memory: a reader
keeping up with the download takes them from there, one reading older bytes reads the spool.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from enum import Enum

from mirror import errors, observe
from mirror.cache.sources import SourceLost, Sources
from mirror.cache.spooling import Spooling
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage import BlobWriter, ContentStore, IntegrityError, Spool, SpoolReader
from mirror.upstream.client import BlobStream, UpstreamError
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
# The bytes arrived and not yet written, at most (past this the source waits). Small enough
# that the buffers in flight stay few and are reused (each fresh page is a page fault).
UNWRITTEN_BYTES = 1024 * 1024
# How many of the latest bytes written are kept in memory, for the readers keeping up.
RECENT_BYTES = 2 * 1024 * 1024
# Errors of a full disk (or of a quota): the mirror cannot store, but can still serve.
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class DownloadLost(UpstreamError):
    """The download this process was following (led elsewhere) ended without committing;
    the client may be answered by a fresh attempt if it got no bytes yet."""


class Fenced(RegistryError):
    """This replica lost the lease of the download another replica relays."""


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

    def __init__(
        self,
        digest: Digest,
        spool: Spool,
        on_idle: Callable[[Download], None] = lambda download: None,
    ) -> None:
        self.digest = digest
        self.size: int | None = None
        self.written = 0
        self.state = State.STARTING
        self.error: RegistryError | None = None
        self.readers = 0
        # The repository this process fetches it for (holding the claim), None when following
        # another process: a reader for any other repository must hold the blob (`BlobCache`).
        self.leads_for: UpstreamRepo | None = None
        # Whether its bytes started from the upstream (for `leads_for`, which the upstream's
        # answer confirms), not relayed from another replica.
        self.from_upstream = False
        # It lost the cluster's lease while leading: no replica may relay it any more (the
        # lease's new holder, or whoever takes it, serves them instead).
        self.fenced = False
        self.cancelled = False  # abandoned beyond the budget: its task is being cancelled
        self._spool = spool
        self._writer: BlobWriter | None = None  # the spool's, once a source answered (leading)
        # The latest writes (offset, bytes), oldest first: in the spool, and at hand.
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        self._changed = asyncio.Event()
        # Told when the download may have become abandoned (no reader; or its size became
        # known while it had none).
        self._on_idle = on_idle

    @property
    def abandoned(self) -> bool:
        """Fetched by this process for nobody: led here, unfinished, with no reader."""
        in_flight = self.state in (State.STARTING, State.RUNNING)
        leads = self.leads_for is not None
        return leads and in_flight and self.readers == 0 and not self.cancelled

    @property
    def remaining(self) -> int:
        """Bytes still to fetch (0 when the size is unknown)."""
        return max(0, self.size - self.written) if self.size is not None else 0

    def fence(self) -> None:
        """It lost the cluster's lease while leading: relay it to no other replica, and cut
        the relays under way (the replicas reading them turn to the lease's new holder,
        from the offset they reached). Its own clients read on."""
        self.fenced = True
        self._notify()

    def reader(self, *, relayed: bool = False) -> Reader:
        """A new reader of this download (it counts until it leaves); `relayed`: another
        replica's, cut when the download is fenced."""
        return Reader(self, relayed=relayed)

    def left(self) -> None:
        """A reader left (`Reader.leave`)."""
        self.readers -= 1
        if self.readers == 0:
            self._on_idle(self)

    # --- consumer side (client responses) -------------------------------------------------

    async def wait_started(self) -> None:
        """Wait for the upstream's answer; raises its error if it refused or failed."""
        while self.state is State.STARTING:
            await self._changed.wait()
        if self.state is State.FAILED:
            assert self.error is not None
            raise self.error

    async def read(
        self, start: int = 0, end: int | None = None, *, relayed: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """Yield bytes [start, end) as they arrive (end None: to the end of the blob).

        Raises the download's error if it fails, and for a read `relayed` to another replica
        `Fenced` once the download is fenced; the caller must then abort its response.
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
                if relayed and self.fenced:
                    raise Fenced(
                        errors.UPSTREAM_UNAVAILABLE,
                        f"this replica lost the lease on {self.digest}: relaying it no more",
                    )
                committed = self.state is State.COMMITTED
                limit = self.written
                if stop is not None:
                    # Hold back the response's last byte until the blob is verified.
                    limit = min(limit, stop if committed else stop - 1)
                if pos < limit:
                    data = self._at_hand(pos, limit)
                    if data is None:
                        data = reader.read(pos, min(limit - pos, READ_CHUNK_BYTES))
                    if data:
                        pos += len(data)
                        yield data
                        continue
                    if committed:
                        raise RegistryError(errors.INTERNAL, "blob file shorter than expected")
                    # Emptied under the reader: the download is failing, which its state
                    # says once its holder reports why.
                elif committed:
                    return
                await changed.wait()
        finally:
            observe.waiter_left()
            reader.close()

    def _at_hand(self, pos: int, limit: int) -> bytes | None:
        """Bytes from `pos` (up to `limit`) of a recent write, if one holds them: a whole
        write when it fits, as the readers keeping up want them (no copy)."""
        for offset, data in reversed(self._recent):
            if offset <= pos:
                if pos >= offset + len(data):
                    return None
                if pos == offset and offset + len(data) <= limit:
                    return data
                return data[pos - offset : limit - offset]
        return None

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
        if self.readers == 0:
            self._on_idle(self)  # its size now counts against the budget

    def _progressed(self, written: int) -> None:
        self.written = written
        self._notify()

    def _committed(self) -> None:
        self.state = State.COMMITTED
        self._notify()

    def _failed(self, error: RegistryError) -> None:
        self.state = State.FAILED
        self.error = error
        self._recent.clear()
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

    async def lead(self, repo: UpstreamRepo, store: ContentStore, sources: Sources) -> None:
        """Fetch the blob from its `sources` into the spool, then commit it (or fail every
        reader); the claim and what the sources hold are given up either way."""
        observe.download_started()
        try:
            await self._transfer(store, sources)
            self._committed()
        except asyncio.CancelledError:
            self._failed(_abandoned() if self.cancelled else _shutting_down())
            raise
        except Exception as exc:
            self._failed(self._failure(repo, exc))
        finally:
            # After the readers were told why (the spool must not look merely short to them):
            # emptied at once, since clients still reading keep the spool open, and on a
            # full disk its space is needed now (by the other downloads). No-op once committed.
            if self._writer is not None:
                await self._writer.abort()
            observe.download_ended()
            self._spool.release()
            await sources.close()

    async def _transfer(self, store: ContentStore, sources: Sources) -> None:
        """Read each source from the offset reached until one reaches the end (a lost one
        is followed by the next), then verify and commit."""
        source = await sources.first()
        while True:
            try:
                async with source.open(self.written) as stream:
                    if self._writer is None:
                        _check_room(self.digest, stream.size, store)
                        self._writer = self._spool.writer(stream.size, relayed=source.relayed)
                        self.from_upstream = not source.relayed
                        self._started(stream.size)
                    elif stream.size is not None and stream.size != self.size:
                        raise IntegrityError(
                            f"a source of {self.digest} has {stream.size} bytes, not {self.size}"
                        )
                    await self._copy(stream, self._writer)
                if source.relayed and self.size is not None and self.written < self.size:
                    raise SourceLost(f"the relay ended at {self.written} of {self.size} bytes")
                break
            except SourceLost as lost:
                source = await sources.after(lost)
        assert self._writer is not None, "a source reached the end without being opened"
        await self._writer.commit(self.size)

    async def _copy(self, stream: BlobStream, writer: BlobWriter) -> None:
        """Append the stream's bytes past those already written (a source that sent the
        blob from an earlier offset has its first bytes skipped). A source that fails
        raises once every byte it sent is written (the next one goes on from there); a
        write that fails raises at once."""
        skip = self.written - stream.start
        if skip < 0:
            raise IntegrityError(f"a source of {self.digest} skipped bytes {self.written}+")
        chunks = _skipped(stream.chunks, skip) if skip else stream.chunks
        await Spooling(writer, self._wrote, limit=UNWRITTEN_BYTES).copy(chunks)

    def _wrote(self, data: bytes) -> None:
        """`data` is in the spool, after the bytes written so far: readers may have it, from
        memory while it is recent."""
        self._recent.append((self.written, data))
        self._recent_bytes += len(data)
        while self._recent_bytes - len(self._recent[0][1]) >= RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popleft()[1])
        self._progressed(self.written + len(data))

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


async def _skipped(chunks: AsyncIterator[bytes], skip: int) -> AsyncIterator[bytes]:
    """The chunks without their first `skip` bytes."""
    async for chunk in chunks:
        if skip:
            dropped = min(skip, len(chunk))
            chunk = chunk[dropped:]
            skip -= dropped
            if not chunk:
                continue
        yield chunk


def _check_room(digest: Digest, size: int | None, store: ContentStore) -> None:
    """Refuse a blob larger than the store's free space before any byte: the client gets a
    clean answer, not a cut."""
    if size is not None and size > (free := store.free_bytes()):
        log.warning(
            "%s (%d bytes) does not fit in %s (%d bytes free): not cached",
            digest,
            size,
            store.location,
            free,
        )
        raise NoRoom(
            errors.UPSTREAM_UNAVAILABLE,
            f"the mirror cannot store this blob ({size} bytes): its data dir has {free} bytes free",
        )


def _shutting_down() -> UpstreamError:
    return UpstreamError(errors.UPSTREAM_UNAVAILABLE, "the mirror is shutting down")


def _abandoned() -> DownloadLost:
    # Only a reader that joined in the instant of the cancellation can see this.
    return DownloadLost(
        errors.UPSTREAM_UNAVAILABLE, "the download was cancelled: no client was reading it"
    )


class Reader:
    """One client's hold on a download: counted from joining until it leaves (its read ends
    or it is released), so a download knows when nobody wants it any more."""

    def __init__(self, download: Download, *, relayed: bool = False) -> None:
        self.download = download
        self._relayed = relayed
        self._left = False
        download.readers += 1

    @property
    def digest(self) -> Digest:
        return self.download.digest

    @property
    def size(self) -> int | None:
        return self.download.size

    async def read(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """The download's bytes [start, end) (see `Download.read`); leaves when done."""
        try:
            async with aclosing(self.download.read(start, end, relayed=self._relayed)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.leave()

    async def release(self) -> None:
        self.leave()

    def leave(self) -> None:
        """Stop counting as a reader (idempotent)."""
        if not self._left:
            self._left = True
            self.download.left()
