"""Injected failures: which request a fault hits, and what it does to the answer on the wire.

Answers are streamed in 64 KiB chunks so that a fault can act mid-body: stop at half the
promised length, hang up with a TCP RST, flip bytes, or slow every chunk down.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from .gates import BodyGate
from .recording import RecordedRequest
from .wire import Reply, Route, error, text

FaultKind = Literal["status", "slow", "truncate", "corrupt", "drop", "reset", "replace", "header"]
_FAULT_KINDS = ("status", "slow", "truncate", "corrupt", "drop", "reset", "replace", "header")
REQUEST_FAULTS = ("status", "drop", "slow")
BODY_FAULTS = ("truncate", "corrupt", "reset", "replace")
# How long a "reset" waits for the first half of the body to leave before the RST.
_RESET_FLUSH_SECONDS = 1.0

CHUNK_SIZE = 64 * 1024
_CORRUPT_SPAN = 16

_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    416: "RANGE_INVALID",
    429: "TOOMANYREQUESTS",
    503: "UNAVAILABLE",
}
_NOT_FOUND_CODES = {"manifest": "MANIFEST_UNKNOWN", "blob": "BLOB_UNKNOWN", "tags": "NAME_UNKNOWN"}


@dataclass
class Fault:
    """One injected failure; matched per request, consumed ``times`` times (None = forever).

    By default a fault only hits requests that passed the server's own checks
    (auth on the registry, Authorization/signature on the CDN), so that "fail
    the manifest GET once" means the real fetch, not the anonymous probe that
    precedes the token dance. Set ``before_auth=True`` to hit every request.

    At most one request-level fault (status/drop/slow), one body-level
    fault (truncate/corrupt/reset/replace) and one header fault apply to a
    request; body-level faults only match responses that actually carry a body
    (never HEAD, 307 or empty bodies).

    - ``truncate``: half the body, then the connection is closed (the full
      Content-Length was promised);
    - ``reset``: half the body, then a TCP RST (SO_LINGER 0), as a peer or
      middlebox that drops the connection hard;
    - ``replace``: ``body`` is sent instead of the real body (with its own
      Content-Length; the real headers, Docker-Content-Digest included, stay);
    - ``header``: ``headers`` are set on the real answer (HEAD and 307s too),
      e.g. a wrong Docker-Content-Digest;
    - ``status`` with ``headers={"Location": ...}`` and a 3xx ``status``
      makes redirects (loops, other schemes).

    Note: aiohttp's client silently retries an idempotent request once after
    the server disconnects without answering, so a "drop" needs ``times=2``
    (or None) to be seen by an aiohttp-based caller.
    """

    kind: FaultKind
    server: str = "registry"
    method: str | None = None
    path_contains: str | None = None
    times: int | None = 1
    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    body: bytes = b""
    before_auth: bool = False
    hits: int = field(default=0, init=False)  # requests this fault has been applied to

    def __post_init__(self) -> None:
        """Reject typos early: a fault that can never match makes a test silently pass."""
        if self.server not in ("registry", "auth", "cdn"):
            raise ValueError(f"unknown server {self.server!r}")
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")

    @property
    def exhausted(self) -> bool:
        """True once the fault has been applied ``times`` times."""
        return self.times is not None and self.hits >= self.times

    def matches(self, server: str, method: str, path: str) -> bool:
        """Whether this fault is eligible for the request (ignoring how often it already fired)."""
        return (
            self.server == server
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains in path)
        )


class FaultQueue:
    """The faults a test queued, in order; earlier faults win when several match."""

    def __init__(self) -> None:
        """Start with no faults."""
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault."""
        self._faults.append(fault)

    def clear(self) -> None:
        """Remove all faults, spent or not."""
        self._faults.clear()

    def take(
        self, server: str, request: web.Request, kinds: tuple[str, ...], allowed: bool
    ) -> Fault | None:
        """Find and consume the first live fault of one of ``kinds`` matching the request."""
        for fault in self._faults:
            if fault.kind not in kinds or fault.exhausted:
                continue
            if not (allowed or fault.before_auth):
                continue
            if fault.matches(server, request.method, request.path):
                fault.hits += 1
                return fault
        return None


def fault_reply(
    server: str, route: Route, fault: Fault, challenge: Callable[[str | None], str]
) -> Reply:
    """The response an injected status fault produces, shaped like that server's errors."""
    headers = dict(fault.headers)
    if server != "registry":
        return text(fault.status, f"injected fault: HTTP {fault.status}", headers)
    code = _STATUS_CODES.get(fault.status, "UNKNOWN")
    if fault.status == 404:
        code = _NOT_FOUND_CODES.get(route.kind, code)
    if fault.status == 401:
        headers.setdefault("WWW-Authenticate", challenge(route.repo))
    if fault.status == 429:
        code = "TOOMANYREQUESTS"
    return error(fault.status, code, f"injected fault: HTTP {fault.status}", headers)


def drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without a response; aiohttp then ignores the unsent reply."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response()


async def send(
    request: web.Request,
    record: RecordedRequest,
    reply: Reply,
    body_fault: Fault | None,
    chunk_delay: float,
    gate: BodyGate | None = None,
) -> web.StreamResponse:
    """Stream the reply in 64 KiB chunks so faults can act mid-body, stopping at the
    `gate` (if any) until it is released; an answer without a body stops before its
    headers."""
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    body = memoryview(reply.body)
    response.content_length = len(body)
    try:
        if gate is not None and (request.method == "HEAD" or not body):
            await gate.hold()
        await response.prepare(request)
        record.status = reply.status
        if request.method == "HEAD" or not body:
            return response
        limit = len(body)
        if body_fault is not None and body_fault.kind in ("truncate", "reset"):
            limit //= 2
        corrupt_at = len(body) // 2
        for offset in range(0, limit, CHUNK_SIZE):
            chunk: bytes | memoryview = body[offset : min(offset + CHUNK_SIZE, limit)]
            end = offset + len(chunk)
            if (
                body_fault is not None
                and body_fault.kind == "corrupt"
                and offset < corrupt_at + _CORRUPT_SPAN
                and corrupt_at < end
            ):
                chunk = _flip(chunk, corrupt_at - offset)
            if chunk_delay and offset:
                await asyncio.sleep(chunk_delay)
            if gate is not None and offset <= gate.at < end:
                await response.write(chunk[: gate.at - offset])
                await gate.hold()
                chunk = chunk[gate.at - offset :]
            await response.write(chunk)
        if gate is not None and gate.at >= limit:
            await gate.hold()
        if limit < len(body):
            # Full Content-Length was promised; stop short and hang up.
            if body_fault is not None and body_fault.kind == "reset":
                await _reset(request)
            elif request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    except ConnectionError:
        record.client_left = True  # a write failed
    except asyncio.CancelledError:
        record.client_left = True  # the server cancels the handler of a client that hung up
        raise
    return response


async def _reset(request: web.Request) -> None:
    """Let what was written reach the peer (bounded), then abort with a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(int(_RESET_FLUSH_SECONDS / 0.005)):
        if not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.005)
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _flip(chunk: bytes | memoryview, start: int) -> bytes:
    """Invert up to 16 bytes from ``start`` (clipped to the chunk) so the digest breaks."""
    data = bytearray(chunk)
    for index in range(max(0, start), min(len(data), start + _CORRUPT_SPAN)):
        data[index] ^= 0xFF
    return bytes(data)
