"""Every request the fake receives, kept so tests can assert exactly what the mirror sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

REQUEST_WAIT = 10.0  # how long wait_for_request waits by default


@dataclass
class RecordedRequest:
    """What one server received, and the status it answered (0 = no response was sent)."""

    server: str
    method: str
    path: str
    query: dict[str, str]  # first value per key; see raw_query for repeated keys
    headers: CIMultiDict[str]  # case-insensitive copy; getall() gives repeated headers
    status: int = 0
    kind: str = "other"  # ping, manifest, blob, tags, token, cdn or other
    raw_query: str = ""
    fault: str | None = None  # kind(s) of fault applied, e.g. "slow+truncate"
    client_left: bool = False  # the client closed the connection before the body's end


class RequestLog:
    """The requests of all three servers in arrival order, with filters and a wait."""

    def __init__(self) -> None:
        """Start empty."""
        self.requests: list[RecordedRequest] = []
        self._recorded: list[asyncio.Event] = []  # one per wait_for_request waiting

    def record(self, server: str, request: web.Request, kind: str) -> RecordedRequest:
        """Record a request on arrival (its status is filled in once the answer starts)."""
        query: dict[str, str] = {}
        for key, value in request.query.items():
            query.setdefault(key, value)
        record = RecordedRequest(
            server=server,
            method=request.method,
            path=request.path,
            query=query,
            headers=CIMultiDict(request.headers),
            kind=kind,
            raw_query=request.query_string,
        )
        self.requests.append(record)
        for arrived in self._recorded:
            arrived.set()
        return record

    def filter_requests(
        self,
        *,
        server: str | None = None,
        method: str | None = None,
        kind: str | None = None,
        path: str | None = None,
    ) -> list[RecordedRequest]:
        """Recorded requests matching all given filters, oldest first."""
        return [
            r
            for r in self.requests
            if (server is None or r.server == server)
            and (method is None or r.method == method.upper())
            and (kind is None or r.kind == kind)
            and (path is None or r.path == path)
        ]

    async def wait_for_request(
        self,
        *,
        within: float = REQUEST_WAIT,
        server: str | None = None,
        method: str | None = None,
        kind: str | None = None,
        path: str | None = None,
    ) -> RecordedRequest:
        """The first recorded request matching all given filters, waiting (at most `within`
        s) until one arrives."""
        arrived = asyncio.Event()
        self._recorded.append(arrived)
        try:
            async with asyncio.timeout(within):
                while not (
                    found := self.filter_requests(
                        server=server, method=method, kind=kind, path=path
                    )
                ):
                    arrived.clear()
                    await arrived.wait()
        except TimeoutError:
            wanted = {"server": server, "method": method, "kind": kind, "path": path}
            raise AssertionError(
                f"no request {wanted} within {within} s; recorded: {self.requests}"
            ) from None
        finally:
            self._recorded.remove(arrived)
        return found[0]
