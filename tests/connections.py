"""A TCP listener that counts the connections it gets, for tests that a host is never
contacted."""

from __future__ import annotations

import asyncio
import socket

SETTLE_TIMEOUT = 5.0


class ConnectionCounter:
    """A TCP listener that only counts connections: where a refused host would be."""

    def __init__(self, port: int = 0) -> None:
        self.connections = 0
        self._port = port  # 0: any free port
        self.address = ""
        self._own: dict[tuple[str, int], asyncio.Event] = {}  # settle()'s markers, by address

    async def __aenter__(self) -> ConnectionCounter:
        async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")[:2]
            if peer in self._own:
                self._own[peer].set()
            else:
                self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(accept, "127.0.0.1", self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"
        return self

    async def settle(self, within: float = SETTLE_TIMEOUT) -> int:
        """`connections` once every connection made before this call has been counted: a
        marker connection of our own queues behind them on the listening socket, so when it
        is accepted, they were too (the marker is not counted)."""
        host, port = self.address.rsplit(":", 1)
        with socket.socket() as marker:
            marker.setblocking(False)
            marker.bind((host, 0))  # its address is known before the listener can see it
            accepted = self._own[marker.getsockname()[:2]] = asyncio.Event()
            async with asyncio.timeout(within):
                await asyncio.get_running_loop().sock_connect(marker, (host, int(port)))
                await accepted.wait()
        return self.connections

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        await self._server.wait_closed()
