"""Answers sent as bytes rendered once: a hot manifest's `200`, whose status line and content
headers are the same for every client, goes out in one write without aiohttp building,
checking and serialising its headers again for each request (on a cache hit that costs more
than finding the manifest). aiohttp still parses the request, routes it through the
middleware, keeps the connection alive and runs the `on_response_prepare` hooks: what
they add (the request id, the API version) and whatever the handler set on `headers`
is rendered per request, after the constant part.

Only the answer aiohttp would give in the same shape is sent this way: `HTTP/1.1` with the
connection kept alive (no `Connection` header either way), no compression. Anything else
(a `304`, a closing or HTTP/1.0 client) is an ordinary response (`usable`).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE

_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()
# aiohttp refuses these in a header (header injection); so does the rendering here.
_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def usable(request: web.BaseRequest) -> bool:
    """Whether a rendered answer says to this client what aiohttp would: an HTTP/1.1 request
    on a connection kept alive."""
    return request.version == HttpVersion11 and request.keep_alive


def render(headers: Iterable[tuple[str, str]]) -> bytes:
    """Header lines as a `PrerenderedResponse` sends them (the caller keeps them ready:
    they are the constant part of its answers, `Content-Length` included)."""
    return _lines(headers)


class PrerenderedResponse(web.StreamResponse):
    """A `200` of header lines from `render` and a body (None for a HEAD: the headers
    only). Handlers may add headers as to any response, before it is prepared. As with
    aiohttp's own responses, `prepare` settles the headers and `write_eof` sends it all
    (so a client gone by then is a quiet disconnect, as for any other answer)."""

    def __init__(self, rendered: bytes, body: bytes | None) -> None:
        super().__init__()
        self._rendered = rendered
        self._payload = body
        self._head: bytes | None = None  # everything up to the body, once prepared
        self._writer: AbstractStreamWriter | None = None
        self._sent = False

    @property
    def body_size(self) -> int:
        """The body's bytes sent (0 for a HEAD), as an access line counts them."""
        return len(self._payload) if self._payload is not None else 0

    @property
    def prepared(self) -> bool:
        return self._writer is not None

    @property
    def keep_alive(self) -> bool:
        """Kept (`usable` saw the client keep it) unless `force_close()` was called."""
        return super().keep_alive is not False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Run the hooks and render the per-request headers (once: aiohttp prepares again
        after the handler)."""
        if self._writer is not None:
            return self._writer
        # The applications' hooks, as aiohttp runs them for its own responses (a bare
        # BaseRequest, of a low-level server, has none).
        if isinstance(request, web.Request):
            for app in request.match_info.apps:
                await app.on_response_prepare.send(request, self)
        closing = b"" if self.keep_alive else b"Connection: close\r\n"
        self._head = b"".join(
            (
                _STATUS_LINE,
                self._rendered,
                _lines(self.headers.items()),
                _date_line(),
                _SERVER,
                closing,
                b"\r\n",
            )
        )
        self._writer = request.writer
        return self._writer

    async def write_eof(self, data: bytes = b"") -> None:
        """Send the answer, in one write."""
        if self._sent or self._writer is None or self._head is None:
            return
        self._sent = True
        await self._writer.write(self._head + self._payload if self._payload else self._head)
        await self._writer.write_eof()


def _lines(pairs: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"{name}: {value}" for name, value in pairs]
    # Printable lines (the usual case) hold no control character; a tab, which is not
    # printable but allowed, makes it look closer.
    if not all(map(str.isprintable, lines)) and any(map(_FORBIDDEN.search, lines)):
        raise ValueError("a control character in a response header")
    return "".join(f"{line}\r\n" for line in lines).encode("utf-8")


@lru_cache(maxsize=1)
def _date_at(second: int) -> bytes:
    return f"Date: {email.utils.formatdate(second, usegmt=True)}\r\n".encode()


def _date_line() -> bytes:
    """`Date`, as aiohttp sends it (formatted once a second)."""
    return _date_at(int(time.time()))
