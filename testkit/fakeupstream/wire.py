"""What the fake's three servers share on the wire: replies, error bodies and Range serving.

Handlers return a ``Reply`` instead of writing a response, so the dispatcher can apply
faults (a status instead of the answer, extra headers, a broken body) to any of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """A response to be streamed; for HEAD only the headers go out, Content-Length stays full."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | memoryview = b""


@dataclass
class Route:
    """A classified request: its kind, why it is refused (if it is), and how to answer it."""

    kind: str
    handle: Callable[[], Awaitable[Reply]]
    denial: Reply | None = None
    repo: str | None = None


class RangeNotSatisfiable(Exception):
    """A syntactically valid Range that lies outside the blob (answer 416)."""


def json_body(obj: Any) -> bytes:
    """Compact JSON for API bodies (not content, so formatting does not matter)."""
    return json.dumps(obj).encode()


def error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """The distribution error envelope every registry error uses."""
    body = json_body({"errors": [{"code": code, "message": message, "detail": None}]})
    all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return Reply(status, all_headers, body)


def text(status: int, text: str, headers: Mapping[str, str] | None = None) -> Reply:
    """A plain-text reply, as the CDN (object storage) and token server errors are not API JSON."""
    return Reply(
        status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, text.encode()
    )


def fixed(reply: Reply) -> Callable[[], Awaitable[Reply]]:
    """A handler that always gives ``reply``, for answers decided while routing."""

    async def handle() -> Reply:
        return reply

    return handle


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive offsets; None means "ignore it, send 200"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(end, size - 1)


def bytes_reply(request: web.Request, data: bytes, headers: dict[str, str]) -> Reply:
    """Serve blob bytes honouring a single Range, as registries and object stores do."""
    size = len(data)
    headers = {**headers, "Accept-Ranges": "bytes"}
    range_header = request.headers.get("Range")
    if range_header is not None:
        try:
            span = parse_range(range_header, size)
        except RangeNotSatisfiable:
            return Reply(416, {**headers, "Content-Range": f"bytes */{size}"})
        if span is not None:
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return Reply(206, headers, memoryview(data)[start : end + 1])
    return Reply(200, headers, data)
