"""A fake Docker Hub: registry, token server and blob CDN on three local ports.

The mirror under test must talk real HTTP to something that behaves like Hub
(bearer challenges, per-repository tokens, 307s to a different origin that
rejects Authorization, Accept negotiation, rate-limit headers) or its logic
is never really exercised. Every request is recorded so tests can assert
exactly what the mirror sent upstream, and faults can be injected per request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

from .images import DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Blob, Manifest

__all__ = ["CHUNK_SIZE", "SERVICE", "FakeRegistry", "Fault", "RecordedRequest"]

ServerName = Literal["registry", "auth", "cdn"]
FaultKind = Literal["status", "slow", "truncate", "corrupt", "drop", "reset", "replace", "header"]
_FAULT_KINDS = ("status", "slow", "truncate", "corrupt", "drop", "reset", "replace", "header")
_BODY_FAULTS = ("truncate", "corrupt", "reset", "replace")
# How long a "reset" waits for the first half of the body to leave before the RST.
_RESET_FLUSH_SECONDS = 1.0

SERVICE = "fake.registry"
REQUEST_WAIT = 10.0  # how long wait_for_request waits by default
CHUNK_SIZE = 64 * 1024
CDN_URL_TTL = 600
_CORRUPT_SPAN = 16

_NAME_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
_DIGEST_RE = re.compile(r"^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_OBJECT_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<op>manifests|blobs)/(?P<ref>[^/]+)$")
_TAGS_RE = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_CDN_RE = re.compile(r"^/blobs/(?P<digest>[^/]+)$")

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


@dataclass
class _Reply:
    """A response to be streamed; for HEAD only the headers go out, Content-Length stays full."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | memoryview = b""


@dataclass
class _Route:
    """A classified request: its kind, why it is refused (if it is), and how to answer it."""

    kind: str
    handle: Callable[[], Awaitable[_Reply]]
    denial: _Reply | None = None
    repo: str | None = None


@dataclass
class _Repo:
    """Content of one repository name."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)


@dataclass
class _Grant:
    """What a bearer token allows, and until when."""

    access: dict[str, set[str]]
    expires_at: float
    user: str | None


class _RangeNotSatisfiable(Exception):
    """A syntactically valid Range that lies outside the blob (answer 416)."""


def _json(obj: Any) -> bytes:
    """Compact JSON for API bodies (not content, so formatting does not matter)."""
    return json.dumps(obj).encode()


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> _Reply:
    """The distribution error envelope every registry error uses."""
    body = _json({"errors": [{"code": code, "message": message, "detail": None}]})
    all_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
    return _Reply(status, all_headers, body)


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> _Reply:
    """A plain-text reply, as the CDN (object storage) and token server errors are not API JSON."""
    return _Reply(
        status, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, text.encode()
    )


def _accepted_types(request: web.Request) -> set[str]:
    """All media types from every Accept header, parameters and q-values dropped."""
    result: set[str] = set()
    for value in request.headers.getall("Accept", []):
        for part in value.split(","):
            media_type = part.split(";", 1)[0].strip().lower()
            if media_type:
                result.add(media_type)
    return result


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Parse a single ``bytes=`` range into inclusive offsets; None means "ignore it, send 200"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # syntactically invalid: ignore the header
    if start >= size:
        raise _RangeNotSatisfiable
    return start, min(end, size - 1)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """Decode ``Authorization: Basic``; None when absent or malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _bearer_token(header: str) -> str | None:
    """Extract the token from ``Authorization: Bearer``; None when absent."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _fixed(reply: _Reply) -> Callable[[], Awaitable[_Reply]]:
    """A handler that always gives ``reply``, for answers decided while routing."""

    async def handle() -> _Reply:
        return reply

    return handle


def _bytes_reply(request: web.Request, data: bytes, headers: dict[str, str]) -> _Reply:
    """Serve blob bytes honouring a single Range, as registries and object stores do."""
    size = len(data)
    headers = {**headers, "Accept-Ranges": "bytes"}
    range_header = request.headers.get("Range")
    if range_header is not None:
        try:
            span = _parse_range(range_header, size)
        except _RangeNotSatisfiable:
            return _Reply(416, {**headers, "Content-Range": f"bytes */{size}"})
        if span is not None:
            start, end = span
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return _Reply(206, headers, memoryview(data)[start : end + 1])
    return _Reply(200, headers, data)


class FakeRegistry:
    """Docker Hub look-alike: registry + token realm + CDN, each a real aiohttp server."""

    def __init__(
        self,
        *,
        auth: Literal["bearer", "basic", "none"] = "bearer",
        users: Mapping[str, str] | None = None,
        anonymous_pull: bool = True,
        redirect_blobs: bool = True,
        head_supported: bool = True,
        send_digest_header: bool = True,
        token_expires_in: int = 300,
        ratelimit: tuple[int, int] | None = None,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        """Configure behaviour; nothing listens until start(). With `tls` (a server
        context) all three servers speak HTTPS. `port` fixes the registry's port (0: any
        free one), so a test can bring an upstream back at the address a mirror knows."""
        if auth not in ("bearer", "basic", "none"):
            raise ValueError(f"unknown auth mode {auth!r}")
        self.auth = auth
        self.users: dict[str, str] = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.redirect_blobs = redirect_blobs
        self.head_supported = head_supported
        self.send_digest_header = send_digest_header
        self.token_expires_in = token_expires_in
        self.ratelimit_limit: int | None = ratelimit[0] if ratelimit else None
        self.ratelimit_remaining: int | None = ratelimit[1] if ratelimit else None
        self.requests: list[RecordedRequest] = []
        self._recorded: list[asyncio.Event] = []  # one per wait_for_request waiting
        self._faults: list[Fault] = []
        self._repos: dict[str, _Repo] = {}
        self._blobs: dict[str, Blob] = {}
        self._tokens: dict[str, _Grant] = {}
        self._cdn_sigs: dict[str, tuple[str, float]] = {}
        self._tls = tls
        self._port = port
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}

    # ----------------------------------------------------------------- content

    def push_image(self, repo: str, tag: str | None, manifest: Manifest) -> None:
        """Store a manifest (an index with all its children) and every blob under ``repo``."""
        if not _NAME_RE.match(repo):
            raise ValueError(f"invalid repository name {repo!r}")
        if tag is not None and not _TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        store = self._repos.setdefault(repo, _Repo())
        pending = [manifest]
        while pending:
            current = pending.pop()
            store.manifests[current.digest] = current
            pending.extend(current.children)
        for blob in manifest.all_blobs():
            store.blobs[blob.digest] = blob
            self._blobs[blob.digest] = blob
        if tag is not None:
            store.tags[tag] = manifest.digest

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Store a loose blob under ``repo`` (creating the repository if needed)."""
        if not _NAME_RE.match(repo):
            raise ValueError(f"invalid repository name {repo!r}")
        self._repos.setdefault(repo, _Repo()).blobs[blob.digest] = blob
        self._blobs[blob.digest] = blob

    def tag(self, repo: str, tag: str, manifest: Manifest) -> None:
        """Create or move ``tag``; the manifest is pushed too so the tag never dangles."""
        self.push_image(repo, tag, manifest)

    def delete_tag(self, repo: str, tag: str) -> None:
        """Remove a tag (its manifest stays reachable by digest, like on a real registry)."""
        del self._repos[repo].tags[tag]

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the three servers on free ports of 127.0.0.1."""
        if self._runners:
            raise RuntimeError("already started")
        handlers: dict[ServerName, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "registry": self._on_registry,
            "auth": self._on_auth,
            "cdn": self._on_cdn,
        }
        try:
            for name, handler in handlers.items():
                app = web.Application()
                app.router.add_route("*", "/{tail:.*}", handler)
                runner = web.AppRunner(
                    app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True
                )
                await runner.setup()
                self._runners.append(runner)
                port = self._port if name == "registry" else 0
                site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=self._tls)
                await site.start()
                host, port = runner.addresses[0][:2]
                scheme = "https" if self._tls is not None else "http"
                self._urls[name] = f"{scheme}://{host}:{port}"
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop all servers; safe to call twice."""
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        self._urls.clear()

    async def __aenter__(self) -> FakeRegistry:
        """Start on entry so tests can write ``async with FakeRegistry() as hub``."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on exit."""
        await self.close()

    def _base(self, name: str) -> str:
        """Base URL of a started server."""
        try:
            return self._urls[name]
        except KeyError:
            raise RuntimeError("FakeRegistry is not started") from None

    @property
    def url(self) -> str:
        """Registry base URL, e.g. http://127.0.0.1:PORT (append /v2/...)."""
        return self._base("registry")

    @property
    def auth_url(self) -> str:
        """Token realm, as advertised in the Bearer challenge."""
        return self._base("auth") + "/token"

    @property
    def cdn_url(self) -> str:
        """Blob storage origin that blob GETs are redirected to."""
        return self._base("cdn")

    # ------------------------------------------------------------ accounting

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

    def count(
        self,
        *,
        server: str | None = None,
        method: str | None = None,
        kind: str | None = None,
        path: str | None = None,
    ) -> int:
        """Number of recorded requests matching all given filters."""
        return len(self.filter_requests(server=server, method=method, kind=kind, path=path))

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
        s) until one arrives. Requests are recorded on arrival, before any fault delays the
        answer: a test can act at the moment the mirror reached the upstream."""
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

    def reset_counts(self) -> None:
        """Forget recorded requests (content, tokens and faults are kept)."""
        self.requests.clear()

    # ------------------------------------------------------------ faults & knobs

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; earlier faults win when several match the same request."""
        self._faults.append(fault)

    def clear_faults(self) -> None:
        """Remove all faults, spent or not."""
        self._faults.clear()

    def expire_tokens(self) -> None:
        """Make every issued token expired now, to exercise the client's token refresh."""
        for grant in self._tokens.values():
            grant.expires_at = 0.0

    def expire_cdn_urls(self) -> None:
        """Invalidate every issued CDN URL (403 on use), like presigned URLs timing out."""
        self._cdn_sigs.clear()

    # ------------------------------------------------------------ dispatch

    async def _on_registry(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the registry server."""
        return await self._dispatch("registry", request, self._route_registry(request))

    async def _on_auth(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the token server."""
        return await self._dispatch("auth", request, self._route_auth(request))

    async def _on_cdn(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the CDN server."""
        return await self._dispatch("cdn", request, self._route_cdn(request))

    def _take_fault(
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

    async def _dispatch(
        self, server: ServerName, request: web.Request, route: _Route
    ) -> web.StreamResponse:
        """Record the request, apply faults, run the handler and stream the answer."""
        query: dict[str, str] = {}
        for key, value in request.query.items():
            query.setdefault(key, value)
        record = RecordedRequest(
            server=server,
            method=request.method,
            path=request.path,
            query=query,
            headers=CIMultiDict(request.headers),
            kind=route.kind,
            raw_query=request.query_string,
        )
        self.requests.append(record)
        for arrived in self._recorded:
            arrived.set()
        applied: list[str] = []
        allowed = route.denial is None

        fault = self._take_fault(server, request, ("status", "drop", "slow"), allowed)
        chunk_delay = 0.0
        if fault is not None:
            applied.append(fault.kind)
            record.fault = fault.kind
        if fault is not None and fault.kind == "drop":
            return self._drop(request)
        if fault is not None and fault.kind == "slow":
            chunk_delay = fault.chunk_delay
            if fault.delay:
                await asyncio.sleep(fault.delay)

        if fault is not None and fault.kind == "status":
            reply = self._fault_reply(server, route, fault)
        elif route.denial is not None:
            reply = route.denial
        else:
            reply = await route.handle()
        if server == "registry":
            reply.headers.setdefault("Docker-Distribution-API-Version", "registry/2.0")
        if fault is None or fault.kind != "status":
            header_fault = self._take_fault(server, request, ("header",), allowed)
            if header_fault is not None:
                applied.append(header_fault.kind)
                record.fault = "+".join(applied)
                reply.headers.update(header_fault.headers)

        body_fault = None
        if request.method != "HEAD" and len(reply.body) > 0:
            body_fault = self._take_fault(server, request, _BODY_FAULTS, allowed)
            if body_fault is not None:
                applied.append(body_fault.kind)
                record.fault = "+".join(applied)
                if body_fault.kind == "replace":
                    reply.body = body_fault.body
        return await self._send(request, record, reply, body_fault, chunk_delay)

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        """Close the connection without a response; aiohttp then ignores the unsent reply."""
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response()

    async def _send(
        self,
        request: web.Request,
        record: RecordedRequest,
        reply: _Reply,
        body_fault: Fault | None,
        chunk_delay: float,
    ) -> web.StreamResponse:
        """Stream the reply in 64 KiB chunks so faults can act mid-body."""
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        body = memoryview(reply.body)
        response.content_length = len(body)
        try:
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
                    chunk = self._flip(chunk, corrupt_at - offset)
                if chunk_delay and offset:
                    await asyncio.sleep(chunk_delay)
                await response.write(chunk)
            if limit < len(body):
                # Full Content-Length was promised; stop short and hang up.
                if body_fault is not None and body_fault.kind == "reset":
                    await self._reset(request)
                elif request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; aiohttp notices on its own
        return response

    @staticmethod
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

    @staticmethod
    def _flip(chunk: bytes | memoryview, start: int) -> bytes:
        """Invert up to 16 bytes from ``start`` (clipped to the chunk) so the digest breaks."""
        data = bytearray(chunk)
        for index in range(max(0, start), min(len(data), start + _CORRUPT_SPAN)):
            data[index] ^= 0xFF
        return bytes(data)

    def _fault_reply(self, server: str, route: _Route, fault: Fault) -> _Reply:
        """The response an injected status fault produces, shaped like that server's errors."""
        headers = dict(fault.headers)
        if server != "registry":
            return _text(fault.status, f"injected fault: HTTP {fault.status}", headers)
        code = _STATUS_CODES.get(fault.status, "UNKNOWN")
        if fault.status == 404:
            code = _NOT_FOUND_CODES.get(route.kind, code)
        if fault.status == 401:
            headers.setdefault("WWW-Authenticate", self._challenge(route.repo))
        if fault.status == 429:
            code = "TOOMANYREQUESTS"
        return _error(fault.status, code, f"injected fault: HTTP {fault.status}", headers)

    # ------------------------------------------------------------ registry

    def _challenge(self, repo: str | None, error: str | None = None) -> str:
        """The WWW-Authenticate value for this auth mode, scoped to ``repo`` when known."""
        if self.auth == "basic":
            return 'Basic realm="fake"'
        value = f'Bearer realm="{self.auth_url}",service="{SERVICE}"'
        if repo is not None:
            value += f',scope="repository:{repo}:pull"'
        if error is not None:
            value += f',error="{error}"'
        return value

    def _check_access(self, request: web.Request, repo: str | None) -> _Reply | None:
        """401 unless allowed to pull ``repo``; for the ping (repo None) any valid login will do."""
        if self.auth == "none":
            return None
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            creds = _basic_credentials(header)
            if creds is not None and self.users.get(creds[0]) == creds[1]:
                return None
            return _error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": self._challenge(repo)},
            )
        token = _bearer_token(header)
        grant = self._tokens.get(token) if token is not None else None
        if grant is not None and grant.expires_at <= time.time():
            grant = None
        if grant is not None and (repo is None or "pull" in grant.access.get(repo, ())):
            return None
        error = None
        if token is not None:
            error = "insufficient_scope" if grant is not None else "invalid_token"
        return _error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            {"WWW-Authenticate": self._challenge(repo, error)},
        )

    def _route_registry(self, request: web.Request) -> _Route:
        """Classify a registry request and pre-compute its auth decision."""
        path = request.path
        if path in ("/v2/", "/v2"):
            return _Route("ping", self._ping, self._check_access(request, None))
        kind, name, ref = "other", "", ""
        match = _OBJECT_RE.match(path)
        if match is not None:
            kind = "manifest" if match.group("op") == "manifests" else "blob"
            name, ref = match.group("name"), match.group("ref")
        elif (match := _TAGS_RE.match(path)) is not None:
            kind, name = "tags", match.group("name")
        if kind == "other":
            return _Route(kind, _fixed(_error(404, "NOT_FOUND", "no such endpoint")))
        if request.method not in ("GET", "HEAD"):
            return _Route(kind, _fixed(_error(405, "UNSUPPORTED", "this registry is read-only")))
        if not _NAME_RE.match(name):
            reply = _error(400, "NAME_INVALID", f"invalid repository name {name!r}")
            return _Route(kind, _fixed(reply))

        async def handle() -> _Reply:
            if kind == "manifest":
                return self._manifest(request, name, ref)
            if kind == "blob":
                return self._blob(request, name, ref)
            return self._tags(request, name)

        return _Route(kind, handle, self._check_access(request, name), repo=name)

    async def _ping(self) -> _Reply:
        """GET /v2/ once authorized."""
        return _Reply(200, {"Content-Type": "application/json"}, b"{}")

    def _ratelimit_headers(self) -> dict[str, str]:
        """Hub-style rate-limit headers, if rate limiting is configured."""
        if self.ratelimit_limit is None or self.ratelimit_remaining is None:
            return {}
        return {
            "ratelimit-limit": f"{self.ratelimit_limit};w=21600",
            "ratelimit-remaining": f"{max(self.ratelimit_remaining, 0)};w=21600",
            "docker-ratelimit-source": "127.0.0.1",
        }

    def _negotiate(self, manifest: Manifest, accepted: set[str]) -> Manifest | None:
        """distribution's tag negotiation: list → linux/amd64 child, unaccepted OCI → None."""
        if not accepted:
            return manifest
        if manifest.media_type == DOCKER_MANIFEST_LIST and DOCKER_MANIFEST_LIST not in accepted:
            children = [c for c in manifest.children if c.platform == "linux/amd64"]
            if not children:
                return None
            manifest = children[0]
        if manifest.media_type in (OCI_MANIFEST, OCI_INDEX) and manifest.media_type not in accepted:
            return None
        return manifest

    def _manifest(self, request: web.Request, name: str, ref: str) -> _Reply:
        """GET/HEAD a manifest by tag (negotiated) or by digest (as stored)."""
        rate = self._ratelimit_headers()
        if request.method == "HEAD" and not self.head_supported:
            return _error(405, "UNSUPPORTED", "HEAD is not supported here", rate)
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry", rate)
        if (
            request.method == "GET"
            and self.ratelimit_remaining is not None
            and self.ratelimit_remaining <= 0
        ):
            return _error(
                429,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit. You may increase the limit by "
                "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
                rate,
            )
        manifest: Manifest | None
        if ":" in ref:
            if not _DIGEST_RE.match(ref):
                return _error(400, "DIGEST_INVALID", "invalid digest", rate)
            manifest = repo.manifests.get(ref)
        else:
            digest = repo.tags.get(ref) if _TAG_RE.match(ref) else None
            manifest = repo.manifests.get(digest) if digest is not None else None
            if manifest is not None:
                manifest = self._negotiate(manifest, _accepted_types(request))
        if manifest is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown", rate)

        headers = {"Content-Type": manifest.media_type, "Etag": f'"{manifest.digest}"'}
        if self.send_digest_header:
            headers["Docker-Content-Digest"] = manifest.digest
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None:
            candidates = {v.strip().strip('"') for v in if_none_match.split(",")}
            if manifest.digest in candidates or "*" in candidates:
                return _Reply(304, {**headers, **self._ratelimit_headers()})
        if request.method == "GET" and self.ratelimit_remaining is not None:
            self.ratelimit_remaining -= 1
        headers.update(self._ratelimit_headers())
        return _Reply(200, headers, manifest.data)

    def _blob(self, request: web.Request, name: str, digest: str) -> _Reply:
        """HEAD answers directly; GET redirects to the CDN or serves the bytes itself."""
        if not _DIGEST_RE.match(digest):
            return _error(400, "DIGEST_INVALID", "invalid digest")
        repo = self._repos.get(name)
        blob = repo.blobs.get(digest) if repo is not None else None
        if blob is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        headers = {
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": blob.digest,
            "Etag": f'"{blob.digest}"',
            "Cache-Control": "max-age=31536000",
        }
        if request.method == "HEAD":
            return _Reply(200, {**headers, "Accept-Ranges": "bytes"}, blob.data)
        if self.redirect_blobs:
            sig = secrets.token_hex(16)
            expires = int(time.time()) + CDN_URL_TTL
            self._cdn_sigs[sig] = (blob.digest, float(expires))
            query = urlencode({"expires": expires, "sig": sig})
            location = f"{self.cdn_url}/blobs/{blob.digest}?{query}"
            return _Reply(307, {"Location": location, "Content-Type": "text/html; charset=utf-8"})
        return _bytes_reply(request, blob.data, headers)

    def _tags(self, request: web.Request, name: str) -> _Reply:
        """Paginated tag list with a path-relative Link, like distribution."""
        repo = self._repos.get(name)
        if repo is None:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        n: int | None = None
        if "n" in request.query:
            try:
                n = int(request.query["n"])
            except ValueError:
                n = -1
            if n < 0:
                return _error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results")
        tags = sorted(repo.tags)
        last = request.query.get("last")
        if last:
            tags = [t for t in tags if t > last]
        headers = {"Content-Type": "application/json"}
        if n is not None:
            more = len(tags) > n
            tags = tags[:n]
            if more and tags:
                query = urlencode({"n": n, "last": tags[-1]})
                headers["Link"] = f'</v2/{name}/tags/list?{query}>; rel="next"'
        return _Reply(200, headers, _json({"name": name, "tags": tags}))

    # ------------------------------------------------------------ token server

    def _route_auth(self, request: web.Request) -> _Route:
        """Classify a token-server request."""
        if request.path != "/token":
            return _Route("other", _fixed(_text(404, "404 page not found")))

        async def handle() -> _Reply:
            return self._token(request)

        return _Route("token", handle)

    def _token(self, request: web.Request) -> _Reply:
        """Issue an opaque token granting the intersection of what was asked and what is allowed."""
        if request.method != "GET":
            return _text(405, "method not allowed")
        service = request.query.get("service")
        if service is not None and service != SERVICE:
            return _Reply(
                400, {"Content-Type": "application/json"}, _json({"details": "invalid service"})
            )
        header = request.headers.get("Authorization", "")
        user: str | None = None
        allowed: set[str] = {"pull"} if self.anonymous_pull else set()
        if header:
            creds = _basic_credentials(header)
            if creds is None or self.users.get(creds[0]) != creds[1]:
                body = _json({"details": "incorrect username or password"})
                return _Reply(401, {"Content-Type": "application/json"}, body)
            user = creds[0]
            allowed = {"pull", "push"}
        access: dict[str, set[str]] = {}
        for param in request.query.getall("scope", []):
            for scope in param.split():
                kind, _, rest = scope.partition(":")
                repo, _, actions = rest.rpartition(":")
                if kind != "repository" or not repo:
                    continue
                granted = set(actions.split(",")) & allowed
                access.setdefault(repo, set()).update(granted)
        token = secrets.token_urlsafe(32)
        now = time.time()
        self._tokens[token] = _Grant(access, now + self.token_expires_in, user)
        issued = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        body = _json(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.token_expires_in,
                "issued_at": issued,
            }
        )
        return _Reply(200, {"Content-Type": "application/json"}, body)

    # ------------------------------------------------------------ CDN

    def _route_cdn(self, request: web.Request) -> _Route:
        """Classify a CDN request; Authorization and bad signatures are refused up front."""
        match = _CDN_RE.match(request.path)
        if match is None:
            return _Route("cdn", _fixed(_text(404, "NoSuchKey")))
        digest = match.group("digest")

        async def handle() -> _Reply:
            blob = self._blobs.get(digest)
            if blob is None:
                return _text(404, "NoSuchKey")
            headers = {"Content-Type": "application/octet-stream", "Etag": f'"{blob.digest}"'}
            return _bytes_reply(request, blob.data, headers)

        return _Route("cdn", handle, self._cdn_denial(request, digest))

    def _cdn_denial(self, request: web.Request, digest: str) -> _Reply | None:
        """Object-storage rules: no Authorization, GET only, and a signature we issued."""
        if "Authorization" in request.headers:
            return _text(400, "authorization header not allowed")
        if request.method == "HEAD":
            # A presigned URL signs the method; HEAD on a GET URL fails, as ghcr's does.
            return _text(403, "SignatureDoesNotMatch")
        if request.method != "GET":
            return _text(405, "MethodNotAllowed")
        issued = self._cdn_sigs.get(request.query.get("sig", ""))
        if issued is None or issued[0] != digest:
            return _text(403, "SignatureDoesNotMatch")
        if issued[1] < time.time():
            return _text(403, "Request has expired")
        return None
