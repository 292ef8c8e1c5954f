"""The filesystem store's verified writer: a temp file hashed as it is written, fsynced,
and renamed into place only once its digest (and size) matched."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from mirror.reference import Digest
from mirror.storage.protocol import IntegrityError


class FileBlobWriter:
    """A `BlobWriter` over a temp file. `shared` is for a download's spool: the file may
    be left by a crashed holder (it is truncated, not created exclusively), and readers may
    have it open, so an abort empties it first to free the space at once."""

    def __init__(
        self,
        tmp_path: Path,
        final_path: Path,
        digest: Digest,
        *,
        shared: bool = False,
        on_commit: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.digest = digest
        self.written = 0
        self._path = tmp_path
        self._final = final_path
        self._shared = shared
        self._on_commit = on_commit  # (size, whether the blob is new)
        self._hash = hashlib.new(digest.algorithm)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if shared else os.O_EXCL)
        self._fd: int | None = os.open(tmp_path, flags, 0o644)
        self._verified = False
        self._done = False  # committed or aborted

    async def write(self, chunk: bytes) -> None:
        assert self._fd is not None and not self._verified, "write after verify or abort"
        view = memoryview(chunk)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        self._hash.update(chunk)
        self.written += len(chunk)

    async def verify(self, expected_size: int | None = None) -> None:
        if self._verified:
            return
        assert self._fd is not None, "verify after abort"
        actual = self._hash.hexdigest()
        if expected_size is not None and self.written != expected_size:
            await self.abort()
            raise IntegrityError(f"expected {expected_size} bytes, got {self.written}")
        if actual != self.digest.hex:
            await self.abort()
            raise IntegrityError(
                f"content hashes to {self.digest.algorithm}:{actual}",
                actual=Digest(self.digest.algorithm, actual),
            )
        await asyncio.to_thread(os.fsync, self._fd)
        # Durable: renaming needs no descriptor, so none is held until the commit.
        self._close()
        self._verified = True

    async def commit(self, expected_size: int | None = None) -> None:
        assert not self._done, "commit after commit or abort"
        await self.verify(expected_size)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        is_new = not self._final.exists()
        self._path.rename(self._final)
        self._done = True
        if self._on_commit is not None:
            self._on_commit(self.written, is_new)

    async def abort(self) -> None:
        if self._done:
            return  # committed: the temp path is no longer ours (a new download may use it)
        self._done = True
        if self._shared:
            with contextlib.suppress(OSError):
                os.truncate(self._path, 0)
        self._close()
        self._path.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
