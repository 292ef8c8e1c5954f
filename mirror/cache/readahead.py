"""A download's source read ahead of its writes, so bytes keep arriving while the last ones
are hashed and written (on a thread: `BlobWriter.write`).

The source is read in a task of its own; each `take` returns everything that arrived since
the last, so nothing waits for a buffer to fill (the first bytes go on as soon as they
arrive: clients wait for them) and a slow write is followed by a larger one. What is read
ahead is bounded: past `limit` bytes the reading waits for a `take` (and the upstream for
the reading, through TCP's flow control).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class ReadAhead:
    """Reads `chunks` ahead in a task; `close` it when done (it stops the reading)."""

    def __init__(self, chunks: AsyncIterator[bytes], *, limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._ended = False
        self._error: Exception | None = None  # the source's: raised after the bytes before it
        self._arrived = asyncio.Event()  # bytes arrived, or the source ended
        self._taken = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def take(self) -> bytes | None:
        """The bytes that arrived since the last take (waiting for some), or None once the
        source ended; raises the source's error once every byte it sent was taken."""
        while not self._pending:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._arrived.clear()
            await self._arrived.wait()
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._taken.set()
        return batch[0] if len(batch) == 1 else b"".join(batch)

    async def close(self) -> None:
        """Stop reading; returns once the reading task has ended."""
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _read(self) -> None:
        try:
            async for chunk in self._chunks:
                self._pending.append(chunk)
                self._pending_bytes += len(chunk)
                self._arrived.set()
                while self._pending_bytes > self._limit:
                    self._taken.clear()
                    await self._taken.wait()
        except Exception as exc:
            self._error = exc
        finally:
            self._ended = True
            self._arrived.set()
