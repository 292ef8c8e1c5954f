"""One blob's download between the processes sharing a data dir, on the filesystem.

The claim is an flock on `<stem>.lock` (the kernel releases it when its holder dies, even
by kill -9). The holder writes the bytes to `<stem>.download`, creating it before it
announces the size in `<stem>.size`, so a process that sees the size can always open the
bytes (or, later, the committed blob). Followers poll these files: there is nothing to
wait on between processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from pathlib import Path

from mirror.reference import Digest
from mirror.storage.filewriter import FileBlobWriter, held
from mirror.storage.protocol import SpoolProgress

# How often a follower looks at the files of another process's download.
FOLLOW_POLL_SECONDS = 0.005
SPOOL_SUFFIXES = ("lock", "download", "size")


class FileSpool:
    """A `Spool` under the store's `tmp/`: `stem` is the download's path without suffix."""

    def __init__(
        self,
        digest: Digest,
        stem: Path,
        blob: Path,
        on_commit: Callable[[int, bool], None],
    ) -> None:
        self._digest = digest
        self._lock = stem.with_suffix(".lock")
        self._data = stem.with_suffix(".download")
        self._size = stem.with_suffix(".size")
        self._blob = blob
        self._on_commit = on_commit
        self._fd: int | None = None  # the flocked lock file, while this process holds it

    def claim(self) -> bool:
        assert self._fd is None, "claimed twice"
        while True:
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.fstat(fd).st_ino == self._lock.stat().st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return True
            os.close(fd)  # the holder removed that lock file as we took it: try again

    def writer(self, size: int | None, *, relayed: bool = False) -> FileBlobWriter:
        """`relayed` changes nothing: the data dir is this host's alone."""
        assert self._fd is not None, "writing without the claim"
        writer = FileBlobWriter(
            self._data, self._blob, self._digest, shared=True, on_commit=self._on_commit
        )
        try:
            announce = self._size.with_suffix(f".{secrets.token_hex(4)}")
            announce.write_text("" if size is None else str(size))
            announce.rename(self._size)
        except OSError:
            self._data.unlink(missing_ok=True)  # created before the failure
            raise
        return writer

    def release(self) -> None:
        """The lock file goes first, so a process taking the claim later cannot hold a
        lock on a removed file."""
        if self._fd is None:
            return
        self._size.unlink(missing_ok=True)
        self._lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def in_progress(self) -> bool:
        return held(self._lock)

    async def watch(self) -> AsyncGenerator[SpoolProgress, None]:
        seen = SpoolProgress()
        while True:
            now = self._look(seen)
            if now != seen:
                seen = now
                yield now
            if now.committed:
                return
            if not self.in_progress():
                # The holder commits before it lets go: a blob now means it just did.
                if (size := self._blob_size()) is None:
                    return
                yield SpoolProgress(True, seen.size if seen.announced else size, size, True)
                return
            await asyncio.sleep(FOLLOW_POLL_SECONDS)

    def _look(self, seen: SpoolProgress) -> SpoolProgress:
        if (size := self._blob_size()) is not None:
            return SpoolProgress(True, seen.size if seen.announced else size, size, True)
        announced, announced_size = seen.announced, seen.size
        if not announced:
            try:
                text = self._size.read_text()
            except FileNotFoundError:
                return seen
            announced, announced_size = True, int(text) if text.isdigit() else None
        try:
            written = max(self._data.stat().st_size, seen.written)
        except FileNotFoundError:
            written = seen.written
        return SpoolProgress(announced, announced_size, written, False)

    def open(self, *, committed: bool) -> _FileReader | None:
        paths = (self._blob,) if committed else (self._data, self._blob)
        for path in paths:
            try:
                return _FileReader(os.open(path, os.O_RDONLY))
            except FileNotFoundError:
                continue
        return None

    def _blob_size(self) -> int | None:
        try:
            return self._blob.stat().st_size
        except FileNotFoundError:
            return None


class _FileReader:
    """A `SpoolReader` over an open file."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        os.close(self._fd)
