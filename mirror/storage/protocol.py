"""The content store's seam: what the caches, eviction, gc, `mirror ls`, export and import
need of the place blobs and manifests are kept, and nothing about how it keeps them.

Content is addressed by digest and nothing becomes visible unless its digest was verified:
a `BlobWriter` publishes only after the bytes match, and a manifest write checks its bytes.
A blob's download is coordinated through its `Spool`: one claim holder writes, and every
other process (or, later, replica) sharing the store streams the bytes as they arrive.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from mirror.reference import Digest

ContentKind = Literal["blob", "manifest"]


class IntegrityError(Exception):
    """Bytes did not match the digest (or size) they were written for; `actual` is the
    digest they hash to, when that was the mismatch."""

    def __init__(self, message: str, *, actual: Digest | None = None) -> None:
        super().__init__(message)
        self.actual = actual


class StoreUnavailable(OSError):
    """The store could not be reached (its service down, timing out or failing): no answer
    about the content. The caches work around it: a lookup counts as a miss, a miss streams
    from the upstream uncached, a manifest is served without being kept."""


@dataclass
class Usage:
    """How much of one kind of content the store holds."""

    objects: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class StoredObject:
    """One committed blob or manifest."""

    kind: ContentKind
    digest: Digest
    size: int
    mtime: float  # unix time it was written


@dataclass(frozen=True)
class StoredManifest:
    data: bytes  # the exact bytes the digest names
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class TempFile:
    """A leftover of a write that never committed (a crash, a kill -9)."""

    name: str
    size: int


class StoredBlob(Protocol):
    """A committed blob, ready to be read."""

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...

    @property
    def local_path(self) -> Path | None:
        """A local file holding the bytes (sent with sendfile), or None when the backend
        keeps them elsewhere (read them with `chunks`)."""

    def open(self) -> BinaryIO:
        """The bytes as a blocking file object (for code running in a thread); raises
        FileNotFoundError when the blob was removed since it was found."""

    def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) (end None: to the end of the blob), in chunks; raises
        FileNotFoundError when the blob was removed since it was found."""


class BlobWriter(Protocol):
    """Writes one blob while hashing it; nothing is visible before `commit`."""

    digest: Digest
    written: int

    async def write(self, chunk: bytes) -> None:
        """Append `chunk`; the bytes are readable (`SpoolReader`) once it returns. A write
        may start before the last one returned: they land in the order they were made."""

    async def verify(self, expected_size: int | None = None) -> None:
        """Check size and digest and make the bytes durable without publishing them;
        IntegrityError (bytes discarded) on mismatch. A verified writer holds on to no
        scarce resource (an import keeps one per blob of a bundle until it commits)."""

    async def commit(self, expected_size: int | None = None) -> None:
        """verify() unless done, then publish under the digest."""

    async def abort(self) -> None:
        """Discard the bytes; safe to call more than once, and a no-op after commit."""


@dataclass(frozen=True)
class SpoolProgress:
    """What a follower sees of a download the claim holder (elsewhere) is doing."""

    announced: bool = False  # the holder has the upstream's answer: bytes may follow
    size: int | None = None  # the size it announced (None: unknown)
    written: int = 0  # bytes readable so far
    committed: bool = False  # verified and published: `written` is the whole blob


class SpoolReader(Protocol):
    """Random access to a download's bytes so far (the growing spool, or the blob once
    committed)."""

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset` (quick: they were just written locally)."""

    def close(self) -> None: ...


class Spool(Protocol):
    """One blob's download as the store coordinates it: one claim holder at a time writes
    the bytes, which every process sharing the store can read while they arrive."""

    def claim(self) -> bool:
        """Become the holder; False when someone else holds the claim. A holder that dies
        loses it (nothing waits for a dead holder)."""

    def writer(self, size: int | None, *, relayed: bool = False) -> BlobWriter:
        """The holder's writer: announces `size` to followers; its bytes are readable by
        them as they are written, and `commit` publishes the blob. Its `abort` frees the
        space at once, even while readers still hold the spool open. `relayed`: the bytes
        come from another replica, which publishes them to a shared store itself, so the
        commit sends them only if the store does not hold them yet."""

    def release(self) -> None:
        """Give the claim up (after a commit or a failure); idempotent."""

    def in_progress(self) -> bool:
        """Whether anyone holds the claim."""

    def watch(self) -> AsyncGenerator[SpoolProgress, None]:
        """A follower's view: the progress each time it changed. Ends after the committed
        state, or without one when the holder gave up (or died) before committing."""

    def open(self, *, committed: bool) -> SpoolReader | None:
        """The bytes so far: the spool, or the blob when `committed` (or when the spool is
        gone: it was committed before this process noticed). None when neither is there."""


class UploadSpool(Protocol):
    """The bytes of the blob uploads in progress into hosted repositories (a push), each
    session's under its id, kept where the processes sharing the store reach them: the
    data dir for a filesystem store, the bucket for an S3 one (so an upload continues on
    any replica). How many bytes a session holds is recorded elsewhere (the metadata
    store); a spool holds at least that many, and reads exactly that many. Its bytes are
    never served: the closing request streams them through a verified `BlobWriter`."""

    async def create(self, upload_id: str) -> None:
        """Room for a new, empty session."""

    async def holds(self, upload_id: str) -> bool:
        """Whether this process reaches the session's bytes (a data dir's are on the host
        that created them only)."""

    async def append(self, upload_id: str, offset: int, chunks: AsyncIterable[bytes]) -> int:
        """Keep the chunk at `offset` (the size recorded so far; anything written past it,
        by a write that died before its record, no longer counts), durably, streamed as it
        arrives; how many bytes it had. After an exception the caller records no new size,
        so whatever part of the chunk was kept does not count."""

    def read(self, upload_id: str, size: int) -> AsyncGenerator[bytes, None]:
        """The session's first `size` bytes, in order; FileNotFoundError when some are
        gone (the session was removed meanwhile)."""

    async def remove(self, upload_id: str) -> None:
        """Drop the session's bytes (idempotent)."""

    def idle(self, older_than: float) -> list[str]:
        """The sessions whose bytes were last written before `older_than` (unix time);
        blocking (housekeeping)."""


class BlobRedirects(Protocol):
    """A store whose blobs clients can fetch themselves, from URLs it signs."""

    async def presigned_get(self, digest: Digest, expires_in: int) -> str:
        """A URL that GETs the blob for `expires_in` seconds (`Range` honoured)."""


class ContentStore(Protocol):
    """Blobs and manifests, keyed by digest. The lookups (`blob_size`, `open_blob`,
    `has_manifest`, `read_manifest`) are async, since a store elsewhere (a bucket) answers
    them over the network and that must not hold up the event loop; what is not there is
    None (or False), not an exception. Housekeeping is blocking. Any call may raise
    `StoreUnavailable` when the store cannot be reached (a bucket's service down; a local
    disk does not raise it)."""

    @property
    def location(self) -> str:
        """Where the content is kept, for messages."""

    @property
    def usage(self) -> Mapping[ContentKind, Usage]:
        """What the store holds, as last measured and counted since."""

    # --- blobs

    async def blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob, or None if it is not there."""

    async def open_blob(self, digest: Digest) -> StoredBlob | None:
        """A committed blob to read, or None if it is not there."""

    def blob_writer(self, digest: Digest) -> BlobWriter:
        """A verified writer for one blob outside any download (an import, say)."""

    def spool(self, digest: Digest) -> Spool:
        """The coordination point of `digest`'s download between processes."""

    @property
    def uploads(self) -> UploadSpool:
        """Where the bytes of blob uploads in progress (pushes) are kept."""

    # --- manifests

    async def has_manifest(self, digest: Digest) -> bool: ...

    async def read_manifest(self, digest: Digest) -> StoredManifest | None: ...

    def recent_manifest(self, digest: Digest) -> StoredManifest | None:
        """The manifest if this process holds it in memory (read lately): no I/O, so a
        cache hit needs no await. None says nothing about the store (`read_manifest`)."""

    async def write_manifest(self, manifest: StoredManifest) -> None:
        """Store manifest bytes with their media type; IntegrityError unless the bytes
        hash to `manifest.digest`. A manifest already stored keeps its first type (one
        upstream cannot change what another's clients see)."""

    # --- housekeeping (blocking: run them in a thread)

    def objects(self, kind: ContentKind) -> Iterator[StoredObject]:
        """Every committed blob or manifest."""

    def remove(self, kind: ContentKind, digest: Digest) -> int:
        """Delete a blob or manifest; the bytes freed (0 if it was not there). A reader
        that has it open keeps reading until done."""

    def measure(self) -> Mapping[ContentKind, Usage]:
        """Count what the store holds (and reset `usage` to it)."""

    def free_bytes(self) -> int:
        """Space left for new content."""

    def check_writable(self) -> None:
        """Raise OSError unless the store takes writes now."""

    def stale_temp_files(self, older_than: float) -> list[TempFile]:
        """Leftovers of writes older than `older_than` (unix time), excluding the spools of
        downloads in progress and files a writer is writing now."""

    def remove_temp_file(self, temp: TempFile) -> None: ...

    def remove_temp_files(self) -> int:
        """Remove the leftovers of writes that ended without a commit (at start): another
        live process's writes (a prefetch, an import, another server) stay, as do files
        younger than a grace period that a writer may still commit. How many went."""
