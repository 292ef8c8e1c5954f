"""A TCP listener that counts the connections it gets, for tests that a host is never
contacted."""

from __future__ import annotations

import asyncio


class ConnectionCounter:
    """A TCP listener that only counts connections: where a refused host would be."""

    def __init__(self) -> None:
        self.connections = 0
        self.address = ""

    async def __aenter__(self) -> ConnectionCounter:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()
