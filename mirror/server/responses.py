"""Response building blocks: byte ranges, zero-copy file slices, content headers."""

from __future__ import annotations

import asyncio
import functools
import re
from contextlib import aclosing
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict, CIMultiDictProxy

from mirror import errors, mediatypes, observe
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.server import prerendered
from mirror.server.prerendered import PrerenderedResponse
from mirror.storage import StoredBlob

# ASCII digits only: `\d` would match any script's digits.
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
# A Range number of more digits is past the end of any blob; it is never given to int(),
# which refuses strings of more than 4300 digits.
_MAX_RANGE_DIGITS = 18
_BEYOND_ANY_BLOB: int = 10**_MAX_RANGE_DIGITS
# Digest-addressed content never changes.
IMMUTABLE_CACHE_CONTROL = "max-age=31536000"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a `Range` header asks for, or None to send the whole body.

    A header that is absent, malformed or asks for several ranges is ignored (RFC 9110
    lets a server answer 200 instead); a well-formed range that starts past the end is
    refused with 416.
    """
    if not header:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = _range_number(last)
        if length == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(0, size - length), size)
    start = _range_number(first)
    end = size if not last else min(_range_number(last) + 1, size)
    if last and _range_number(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return ByteRange(start, end)


def _range_number(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    if len(significant) > _MAX_RANGE_DIGITS:
        return _BEYOND_ANY_BLOB
    return int(significant)


def _unsatisfiable(size: int) -> RegistryError:
    return RegistryError(
        errors.RANGE_NOT_SATISFIABLE,
        f"requested range not satisfiable for a blob of {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def header_safe(text: str, limit: int) -> str:
    """`text` fit for a header or status line: printable ASCII only (no CR/LF, no quotes or
    backslashes that would end a quoted-string), at most `limit` characters."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text[:limit]  # the common case, without a pass over each character
    return "".join(c if " " <= c <= "~" and c not in '"\\' else " " for c in text)[:limit]


def content_headers(digest: Digest, media_type: str) -> dict[str, str]:
    return {
        "Content-Type": media_type,
        "Docker-Content-Digest": str(digest),
        "ETag": f'"{digest}"',
    }


def etag_matches(request: web.Request, digest: Digest) -> bool:
    """True when the client already holds this content (`If-None-Match`)."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    wanted = str(digest)
    return any(
        tag.strip().removeprefix("W/").strip('"') in (wanted, "*") for tag in header.split(",")
    )


class BlobSliceResponse(web.StreamResponse):
    """Sends part of a stored blob: with sendfile(2) when the store has it as a local file
    (the bytes never pass through Python), else chunk by chunk."""

    def __init__(
        self, blob: StoredBlob, offset: int, count: int, *, status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(status=status, headers=headers)
        self._blob = blob
        self._offset = offset
        self._count = count
        self.content_length = count

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:  # sent already: aiohttp prepares again after the handler returns
            return await super().prepare(request)
        writer = await super().prepare(request)
        if request.method == "HEAD" or self._count == 0:
            return writer
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        if (path := self._blob.local_path) is not None:
            with path.open("rb") as fh:
                await asyncio.get_running_loop().sendfile(transport, fh, self._offset, self._count)
        else:
            async with aclosing(
                self._blob.chunks(self._offset, self._offset + self._count)
            ) as chunks:
                async for chunk in chunks:
                    await self.write(chunk)
        observe.served_bytes(self._count, from_cache=True)
        return writer


def abort(request: web.Request) -> None:
    """Cut the client's connection mid-body, so it sees a failed transfer rather than a
    complete one with bad bytes."""
    if request.transport is not None:
        request.transport.abort()


# Manifests whose headers are kept ready: the same few are served over and over.
MANIFEST_HEADERS_KEPT = 1024


@functools.lru_cache(maxsize=MANIFEST_HEADERS_KEPT)
def _manifest_headers(digest: Digest, media_type: str) -> CIMultiDictProxy[str]:
    """A manifest's content headers, built once per digest and type (each response copies
    them: its own headers are added on top)."""
    return CIMultiDictProxy(CIMultiDict(content_headers(digest, media_type)))


@functools.lru_cache(maxsize=MANIFEST_HEADERS_KEPT)
def _rendered_manifest_headers(digest: Digest, media_type: str, content_length: int) -> bytes:
    headers = {**content_headers(digest, media_type), "Content-Length": str(content_length)}
    return prerendered.render(headers.items())


def manifest_response(
    request: web.Request, digest: Digest, media_type: str, size: int, data: bytes | None
) -> web.StreamResponse:
    headers = _manifest_headers(digest, media_type)
    if etag_matches(request, digest):
        return web.Response(status=304, headers=headers)
    body = None if request.method == "HEAD" else data
    if prerendered.usable(request):
        length = size if body is None else len(body)
        return PrerenderedResponse(_rendered_manifest_headers(digest, media_type, length), body)
    if data is None or request.method == "HEAD":
        response = web.StreamResponse(headers=headers)
        response.content_length = size
        return response
    return web.Response(body=data, headers=headers)


def blob_headers(digest: Digest) -> dict[str, str]:
    return {
        **content_headers(digest, mediatypes.BLOB_CONTENT_TYPE),
        "Accept-Ranges": "bytes",
        "Cache-Control": IMMUTABLE_CACHE_CONTROL,
    }


def cached_blob_response(
    request: web.Request, digest: Digest, blob: StoredBlob
) -> web.StreamResponse:
    headers = blob_headers(digest)
    if etag_matches(request, digest):
        return web.Response(status=304, headers=headers)
    rng = parse_range(request.headers.get("Range"), blob.size)
    if rng is None:
        return BlobSliceResponse(blob, 0, blob.size, status=200, headers=headers)
    headers["Content-Range"] = rng.content_range(blob.size)
    return BlobSliceResponse(blob, rng.start, rng.end - rng.start, status=206, headers=headers)
