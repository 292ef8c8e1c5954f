"""A TCP relay with a gate, for holding a request to a real server (SeaweedFS) while a test
watches what its own event loop does meanwhile. The relay runs an event loop on a thread of
its own, so it keeps relaying even when the code under test blocks the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")

# The longest a closed gate holds bytes back. Code that blocks the test's event loop while
# it waits for the answer leaves the test no way to open the gate: the relay then lets go by
# itself, and the test fails on what it saw instead of hanging.
HOLD_LIMIT = 10.0


class GatedRelay:
    """Relays connections to `127.0.0.1:target_port` (at `endpoint`). While the gate is
    closed, what clients send is held back (and `held` set), so no request gets an answer."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._open = threading.Event()
        self._open.set()
        self.held = threading.Event()
        self.endpoint = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._connections: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    def close_gate(self) -> None:
        self.held.clear()
        self._open.clear()

    def open_gate(self) -> None:
        self._open.set()

    def __enter__(self) -> GatedRelay:
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.open_gate()
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _stop(self) -> None:
        """Closing every socket ends every connection's relay (its reads end)."""
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._connections)

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.append(to_client)
        try:
            with contextlib.suppress(OSError):
                server, to_server = await asyncio.open_connection("127.0.0.1", self._target_port)
                self._writers.append(to_server)
                try:
                    await asyncio.gather(
                        self._pipe(client, to_server, gated=True),
                        self._pipe(server, to_client, gated=False),
                    )
                finally:
                    to_server.close()
        finally:
            to_client.close()
            self._connections.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, gated: bool
    ) -> None:
        while data := await reader.read(64 * 1024):
            if gated and not self._open.is_set():
                self.held.set()
                await asyncio.to_thread(self._open.wait, HOLD_LIMIT)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
