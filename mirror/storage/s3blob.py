"""Reading blobs of the S3 store: the local hot cache (recently read blobs, verified, kept
as files of the data dir and sent with sendfile) and blobs read from the bucket (with the
requested range passed through as `Range`; a whole read fills the hot cache once its bytes
verified)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import ClientError

from mirror.reference import Digest
from mirror.storage.filesystem import FileBlob, FilesystemStore
from mirror.storage.protocol import IntegrityError
from mirror.storage.s3writer import is_missing

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024


class HotCache:
    """The blobs of `local` (a filesystem store in the data dir), least recently used first,
    kept under `limit` bytes (the newest always stays: a download's followers read it).

    The processes of a host (a server's workers) share the directory and its byte count
    (`local.usage`), and each evicts, oldest first, the blobs it knows of: those there when
    it started and those it admitted since. Together they stay under `limit`, give or take
    each one's newest blob."""

    def __init__(self, local: FilesystemStore, limit: int) -> None:
        self.local = local
        self._limit = limit
        self._lock = threading.Lock()
        found = sorted(local.objects("blob"), key=lambda o: o.mtime)
        self._entries: OrderedDict[Digest, int] = OrderedDict((o.digest, o.size) for o in found)
        local.measure()
        self._evict()

    def blob(self, digest: Digest) -> FileBlob | None:
        """The cached file of `digest` (now the most recently used), or None."""
        blob = self.local.blob_file(digest)
        if blob is None:
            return None
        with self._lock:
            if digest in self._entries:
                self._entries.move_to_end(digest)
        return blob

    def admit(self, digest: Digest, size: int) -> None:
        """Note a blob just committed into `local` (which counted it), and make room under
        the limit."""
        with self._lock:
            self._entries.pop(digest, None)
            self._entries[digest] = size
        self._evict()

    def drop(self, digest: Digest) -> None:
        with self._lock:
            self._entries.pop(digest, None)
        self.local.remove("blob", digest)

    def _evict(self) -> None:
        while self.local.usage["blob"].bytes > self._limit:
            with self._lock:
                if len(self._entries) <= 1:
                    return
                digest, _ = self._entries.popitem(last=False)
            self.local.remove("blob", digest)


@dataclass(frozen=True)
class S3Blob:
    """A `StoredBlob` in the bucket: `get` is the aiobotocore GetObject of its key (given a
    Range header or None), `get_blocking` the same through the blocking client; a whole read
    is kept in `hot` once verified."""

    digest: Digest
    size: int
    key: str
    get: Callable[[str | None], Awaitable[Any]]
    get_blocking: Callable[[], Any]
    hot: HotCache

    @property
    def local_path(self) -> Path | None:
        return None

    def open(self) -> BinaryIO:
        """The whole blob in an anonymous temp file of the data dir, verified;
        FileNotFoundError when it was removed from the bucket since it was found."""
        spool = tempfile.TemporaryFile(dir=self.hot.local.tmp_dir)  # noqa: SIM115 (returned)
        try:
            with _removed_is_not_found(self.key):
                body = self.get_blocking()["Body"]
            hasher = hashlib.sha256()
            while data := body.read(READ_CHUNK_BYTES):
                hasher.update(data)
                spool.write(data)
            _verify(self.digest, hasher, spool.tell(), self.size)
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """FileNotFoundError when the blob was removed from the bucket since it was found."""
        stop = self.size if end is None else end
        if start >= stop:
            return
        whole = start == 0 and stop == self.size
        with _removed_is_not_found(self.key):
            answer = await self.get(None if whole else f"bytes={start}-{stop - 1}")
        body = answer["Body"]
        keep = self.hot.local.blob_writer(self.digest) if whole else None
        try:
            sent = 0
            while sent < stop - start:
                data = await body.read(min(READ_CHUNK_BYTES, stop - start - sent))
                if not data:
                    raise OSError(f"{self.key} ended after {start + sent} of {stop} bytes")
                sent += len(data)
                if keep is not None:
                    await keep.write(data)
                yield data
            if keep is not None:
                await keep.commit(self.size)
                self.hot.admit(self.digest, self.size)
                keep = None
        finally:
            body.close()
            if keep is not None:
                await asyncio.shield(keep.abort())


@contextmanager
def _removed_is_not_found(key: str) -> Iterator[None]:
    """A GET of a key deleted since its blob was found fails as a removed file would."""
    try:
        yield
    except ClientError as exc:
        if is_missing(exc):
            raise FileNotFoundError(f"{key} was removed") from None
        raise


def _verify(digest: Digest, hasher: Any, got: int, size: int) -> None:
    if got != size:
        raise IntegrityError(f"blob {digest} read back {got} of {size} bytes")
    if hasher.hexdigest() != digest.hex:
        raise IntegrityError(f"blob {digest} read back hashes to sha256:{hasher.hexdigest()}")
