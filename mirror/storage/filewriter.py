"""The filesystem store's verified writer: a temp file hashed as it is written, fsynced,
and renamed into place only once its digest (and size) matched.

While it writes, a writer holds an flock on its temp file, so clean-up in another process
(`remove_temp_files` at a server's start, gc) sees it is alive. Its file may still be
removed or replaced under it (by a process that took it for a crash's leftover): so the
commit renames the path only while it is the very file written (same device, inode, size
and change time as the descriptor had when the writer let it go: a freed inode number can
be reused at once), and fsyncs the directory after the rename so the commit survives a power cut.

Writes append and hash on a thread (os.write and hashlib release the GIL on large buffers),
so the event loop serves clients meanwhile: one thread per process, which the writers take
in turns, in the order their writes were made (a writer may make its next write before the
last one is done: the thread then goes on to it without waiting for the event loop). One
thread is as many as the loop leaves a core for, and it meets a full disk one write at a
time: a write that fails empties its file before the next write runs, so one download
hitting a full disk does not make the others fail with it. A small write with none under
way is done on the event loop: handing it over would cost more than doing it. The disk
writes the bytes back as they come (`sync_file_range`, where there is one), so the fsync of
the verified file waits for its last few MiB only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mirror.reference import Digest
from mirror.storage.protocol import IntegrityError

# Writes below this size, with none under way, are done on the event loop.
INLINE_BYTES = 256 * 1024
# Bytes written between two starts of their writeback.
WRITEBACK_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # start writing back, wait for nothing


def _writes_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="blob-writes")


# The writes' thread, started at the first write.
_WRITES = _writes_thread()


def _after_fork() -> None:
    """A forked process (a worker) has none of its parent's threads: it starts its own."""
    global _WRITES
    _WRITES = _writes_thread()


os.register_at_fork(after_in_child=_after_fork)


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range (not in `os`), or None where the C library has none."""
    start = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if start is None:
        return None
    start.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    start.restype = ctypes.c_int
    starter: Callable[[int, int, int, int], int] = start
    return starter


_start_writeback = _writeback_starter()


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
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._identity = _identity(os.fstat(self._fd))  # the file this writer writes
        except OSError:
            self._close()
            raise
        self._verified = False
        self._done = False  # committed or aborted
        # The last write handed to the thread; one whose caller was cancelled runs on, and
        # is waited for before the descriptor closes (its number could be reused at once).
        self._last: asyncio.Future[None] | None = None
        self._broken = False  # a write failed: its file was emptied
        self._written_back = 0  # bytes whose writeback was started

    @property
    def path(self) -> Path:
        """The temp file written (a store publishing elsewhere reads it back from here)."""
        return self._path

    async def write(self, chunk: bytes) -> None:
        """Append and hash `chunk` after the writes made before it (on the writes' thread,
        unless it is small and none is under way); the bytes are in the file once it
        returns. After an OSError the writer is good for `abort` only."""
        assert self._fd is not None and not self._verified, "write after verify or abort"
        if len(chunk) < INLINE_BYTES and (self._last is None or self._last.done()):
            self._append(self._fd, chunk)
            return
        loop = asyncio.get_running_loop()
        self._last = done = loop.run_in_executor(_WRITES, self._append, self._fd, chunk)
        await asyncio.shield(done)

    def _append(self, fd: int, chunk: bytes) -> None:
        if self._broken:
            raise OSError(f"an earlier write to {self._path.name} failed")
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            # Its bytes are lost: their room goes back now, before another write needs it.
            self._broken = True
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            raise
        self._hash.update(chunk)
        self.written += len(chunk)
        if _start_writeback is not None and self.written - self._written_back >= WRITEBACK_BYTES:
            # Best effort: where it fails, the fsync writes these bytes back instead.
            _start_writeback(
                fd, self._written_back, self.written - self._written_back, _SYNC_FILE_RANGE_WRITE
            )
            self._written_back = self.written

    async def _settled(self) -> None:
        """Wait for the writes left running by cancelled callers (they no longer count)."""
        if self._last is not None and not self._last.done():
            await asyncio.wait({self._last})

    async def verify(self, expected_size: int | None = None) -> None:
        if self._verified:
            return
        assert self._fd is not None, "verify after abort"
        assert self._last is None or self._last.done(), "verify while a write runs"
        assert not self._broken, "verify after a failed write"
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
        self._identity = _identity(os.fstat(self._fd))
        self._close()
        self._verified = True

    async def commit(self, expected_size: int | None = None) -> None:
        assert not self._done, "commit after commit or abort"
        await self.verify(expected_size)
        is_new = await asyncio.to_thread(self._rename)
        self._done = True
        if self._on_commit is not None:
            self._on_commit(self.written, is_new)

    def _rename(self) -> bool:
        """Publish the verified file; whether the final path was new."""
        if not self._is_ours():
            self._done = True
            raise FileNotFoundError(
                f"temp file {self._path.name} was removed or replaced before its commit"
            )
        self._final.parent.mkdir(parents=True, exist_ok=True)
        is_new = not self._final.exists()
        self._path.rename(self._final)
        sync_directory(self._final.parent)
        return is_new

    async def abort(self) -> None:
        if self._done:
            return  # committed: the temp path is no longer ours (a new download may use it)
        self._done = True
        await self._settled()
        ours = self._is_ours()
        if self._shared and ours:
            with contextlib.suppress(OSError):
                os.truncate(self._path, 0)
        self._close()
        if ours:
            self._path.unlink(missing_ok=True)

    def _is_ours(self) -> bool:
        """Whether the temp path still names the file this writer wrote."""
        if self._fd is not None:
            self._identity = _identity(os.fstat(self._fd))  # written since it was opened
        try:
            return _identity(self._path.stat()) == self._identity
        except FileNotFoundError:
            return False

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_ctime_ns)


def sync_directory(directory: Path) -> None:
    """fsync a directory, so a rename into it is durable (the file's own fsync is not
    enough: the new name lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def held(path: Path) -> bool:
    """Whether a live process holds an flock on `path` (a writer writing it, a download's
    claim); the kernel drops it when that process dies."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
