"""A download's bytes on their way from its source into its writer, without the two waiting
on each other.

The source is read in a task of its own, and its bytes are written as they arrive, with two
writes under way at once: a writer hashes and writes on a thread (`BlobWriter.write`), which
then finds the next write waiting rather than idling while the event loop gets to it. What
arrives meanwhile goes in the next write whole (nothing waits for a buffer to fill: the first
bytes go on as soon as they arrive, since clients wait for them). What is not yet written is
bounded: past `limit` bytes the reading waits (and the upstream with it, through TCP's flow
control).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from mirror.storage import BlobWriter

# Writes under way at once: one on the writer's thread, the next queued behind it.
WRITES_IN_FLIGHT = 2


class Spooling:
    """Copies a source's chunks into `writer`; `on_written` is told each write's bytes once
    they are written, in order."""

    def __init__(
        self, writer: BlobWriter, on_written: Callable[[bytes], None], *, limit: int
    ) -> None:
        self._writer = writer
        self._on_written = on_written
        self._limit = limit
        self._pending: list[bytes] = []  # arrived, not yet handed to a write
        self._pending_bytes = 0
        self._writes: deque[asyncio.Task[None]] = deque()  # under way, oldest first
        self._received = False  # the source ended (`_source_error` says how)
        self._source_error: Exception | None = None
        self._write_error: Exception | None = None
        self._changed = asyncio.Event()

    async def copy(self, chunks: AsyncIterator[bytes]) -> None:
        """Write every chunk of `chunks`. A write that fails raises at once; a source that
        fails raises once the bytes it sent before are written."""
        receiving = asyncio.create_task(self._receive(chunks))
        try:
            while self._write_error is None and not (
                self._received and not self._pending and not self._writes
            ):
                await self._change()
            if self._write_error is not None:
                raise self._write_error
            if self._source_error is not None:
                raise self._source_error
        finally:
            # Stop reading, and let no write run on unawaited (a failure, a cancellation).
            unfinished = [receiving, *self._writes]
            for task in unfinished:
                task.cancel()
            await asyncio.wait(unfinished)

    async def _receive(self, chunks: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in chunks:
                self._pending.append(chunk)
                self._pending_bytes += len(chunk)
                self._start_writes()
                while self._pending_bytes > self._limit and self._write_error is None:
                    await self._change()
        except Exception as exc:
            self._source_error = exc
        finally:
            self._received = True
            self._changed.set()

    def _start_writes(self) -> None:
        while len(self._writes) < WRITES_IN_FLIGHT and self._pending and not self._write_error:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            data = batch[0] if len(batch) == 1 else b"".join(batch)
            before = self._writes[-1] if self._writes else None
            self._writes.append(asyncio.create_task(self._write(data, before)))

    async def _write(self, data: bytes, before: asyncio.Task[None] | None) -> None:
        """Write `data` (after `before`, which its writer finishes first), then report it."""
        try:
            await self._writer.write(data)
            if before is not None:
                await before
        except Exception as exc:
            if self._write_error is None:
                self._write_error = exc
            self._changed.set()
            return
        self._writes.popleft()  # this one: the writes before it are done
        self._on_written(data)
        self._start_writes()
        self._changed.set()

    async def _change(self) -> None:
        self._changed.clear()
        await self._changed.wait()
