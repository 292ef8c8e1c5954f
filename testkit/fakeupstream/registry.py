"""A fake Docker Hub: registry, token server and blob CDN on three local ports.

The mirror under test must talk real HTTP to something that behaves like Hub
(bearer challenges, per-repository tokens, 307s to a different origin that
rejects Authorization, Accept negotiation, rate-limit headers) or its logic
is never really exercised. Every request is recorded so tests can assert
exactly what the mirror sent upstream, faults can be injected per request, and a body
can be held mid-way until the test releases it (a gate).

This module starts the servers and runs each request through the same steps (record,
route, fault, answer); what each server answers lives in `registry_routes`, `tokens` and
`cdn`, the faults in `faults`, the gates in `gates`, the records in `recording`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Literal

from aiohttp import web

from . import faults
from .cdn import Cdn
from .content import Content
from .faults import BODY_FAULTS, REQUEST_FAULTS, Fault, FaultQueue
from .gates import BodyGate, GateList
from .images import Blob, Manifest
from .recording import REQUEST_WAIT, RecordedRequest, RequestLog
from .referrers import fallback_tag, subject_of, tag_index
from .registry_routes import RegistryRoutes
from .tokens import AuthMode, TokenRealm
from .wire import Route

__all__ = ["FakeRegistry"]

ServerName = Literal["registry", "auth", "cdn"]


class FakeRegistry:
    """Docker Hub look-alike: registry + token realm + CDN, each a real aiohttp server."""

    def __init__(
        self,
        *,
        auth: AuthMode = "bearer",
        users: Mapping[str, str] | None = None,
        anonymous_pull: bool = True,
        redirect_blobs: bool = True,
        head_supported: bool = True,
        send_digest_header: bool = True,
        converts_docker_manifests: bool = False,
        referrers_api: bool = True,
        token_expires_in: int = 300,
        ratelimit: tuple[int, int] | None = None,
        tls: ssl.SSLContext | None = None,
        port: int = 0,
        private: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Configure behaviour; nothing listens until start(). With `tls` (a server
        context) all three servers speak HTTPS. `port` fixes the registry's port (0: any
        free one), so a test can bring an upstream back at the address a mirror knows.
        `private` maps a repository to the only users who may pull it.
        `converts_docker_manifests`: a tag of a Docker image asked for with an Accept that
        takes OCI manifests but not Docker ones is answered with an OCI rewrite of it, made
        on the fly (its own digest, not served by digest), as converting registries do.
        `referrers_api`: the registry serves `/v2/<name>/referrers/<digest>`; without it,
        that path is no endpoint (404) and `push_referrer` keeps the fallback tag instead."""
        self._realm = TokenRealm(
            auth=auth,
            users=users or {},
            anonymous_pull=anonymous_pull,
            token_expires_in=token_expires_in,
            realm_url=lambda: self.advertised_realm or self.auth_url,
            private=private or {},
        )
        #: A realm URL to advertise instead of our own (a hostile upstream's).
        self.advertised_realm: str | None = None
        self._content = Content()
        self._cdn = Cdn(self._content, lambda: self.cdn_url)
        self._routes = RegistryRoutes(
            self._content,
            self._realm,
            self._cdn,
            redirect_blobs=redirect_blobs,
            head_supported=head_supported,
            send_digest_header=send_digest_header,
            converts_docker_manifests=converts_docker_manifests,
            referrers_api=referrers_api,
            ratelimit=ratelimit,
        )
        self._log = RequestLog()
        self._faults = FaultQueue()
        self._gates = GateList()
        self._tls = tls
        self._port = port
        self._runners: list[web.AppRunner] = []
        self._urls: dict[str, str] = {}

    @property
    def token_expires_in(self) -> int:
        """Lifetime of issued tokens, in seconds (the token answer's ``expires_in``)."""
        return self._realm.token_expires_in

    @property
    def ratelimit_remaining(self) -> int | None:
        """Manifest GETs left before 429 (None: no rate limit); a test may set it."""
        return self._routes.ratelimit_remaining

    @ratelimit_remaining.setter
    def ratelimit_remaining(self, value: int | None) -> None:
        self._routes.ratelimit_remaining = value

    @property
    def referrers_page_size(self) -> int | None:
        """Referrers per page of the referrers API (None: all on one); a test may set it."""
        return self._routes.referrers_page_size

    @referrers_page_size.setter
    def referrers_page_size(self, value: int | None) -> None:
        self._routes.referrers_page_size = value

    # ----------------------------------------------------------------- content

    def push_image(self, repo: str, tag: str | None, manifest: Manifest) -> None:
        """Store a manifest (an index with all its children) and every blob under ``repo``."""
        self._content.push_image(repo, tag, manifest)

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Store a loose blob under ``repo`` (creating the repository if needed)."""
        self._content.push_blob(repo, blob)

    def tag(self, repo: str, tag: str, manifest: Manifest) -> None:
        """Create or move ``tag``; the manifest is pushed too so the tag never dangles."""
        self._content.push_image(repo, tag, manifest)

    def push_referrer(self, repo: str, referrer: Manifest) -> None:
        """Push a manifest with a `subject` (untagged), as a signing client does: the
        referrers API lists it; without that API, the client's read-modify-write of the
        subject's fallback tag (`sha256-<hex>`) is done here."""
        self._content.push_image(repo, None, referrer)
        subject = subject_of(referrer)
        if subject is None:
            raise ValueError("a referrer names a subject")
        if not self._routes.referrers_api:
            index = tag_index(self._content, repo, subject)
            self._content.push_image(repo, fallback_tag(subject), index)

    def delete_tag(self, repo: str, tag: str) -> None:
        """Remove a tag (its manifest stays reachable by digest, like on a real registry)."""
        self._content.delete_tag(repo, tag)

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

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request the three servers received, oldest first."""
        return self._log.requests

    def filter_requests(
        self,
        *,
        server: str | None = None,
        method: str | None = None,
        kind: str | None = None,
        path: str | None = None,
    ) -> list[RecordedRequest]:
        """Recorded requests matching all given filters, oldest first."""
        return self._log.filter_requests(server=server, method=method, kind=kind, path=path)

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
        return await self._log.wait_for_request(
            within=within, server=server, method=method, kind=kind, path=path
        )

    def reset_counts(self) -> None:
        """Forget recorded requests (content, tokens and faults are kept)."""
        self._log.requests.clear()

    # ------------------------------------------------------------ faults & knobs

    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; earlier faults win when several match the same request."""
        self._faults.add(fault)

    def clear_faults(self) -> None:
        """Remove all faults, spent or not, and release every gate."""
        self._faults.clear()
        self._gates.clear()

    def hold_body(
        self,
        at: int,
        *,
        server: str = "cdn",
        path_contains: str | None = None,
        times: int | None = 1,
    ) -> BodyGate:
        """Hold the body of the next `times` matching answers after `at` bytes until the
        returned gate is released (see `gates`); the CDN by default, where blob bytes come
        from. An answer without a body (a HEAD's) is held before its headers."""
        gate = BodyGate(at, server, path_contains, times)
        self._gates.add(gate)
        return gate

    def expire_tokens(self) -> None:
        """Make every issued token expired now, to exercise the client's token refresh."""
        self._realm.expire_tokens()

    def expire_cdn_urls(self) -> None:
        """Invalidate every issued CDN URL (403 on use), like presigned URLs timing out."""
        self._cdn.expire_urls()

    # ------------------------------------------------------------ dispatch

    async def _on_registry(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the registry server."""
        return await self._dispatch("registry", request, self._routes.route(request))

    async def _on_auth(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the token server."""
        return await self._dispatch("auth", request, self._realm.route(request))

    async def _on_cdn(self, request: web.Request) -> web.StreamResponse:
        """Entry point of the CDN server."""
        return await self._dispatch("cdn", request, self._cdn.route(request))

    async def _dispatch(
        self, server: ServerName, request: web.Request, route: Route
    ) -> web.StreamResponse:
        """Record the request, apply faults, run the handler and stream the answer."""
        record = self._log.record(server, request, route.kind)
        applied: list[str] = []
        allowed = route.denial is None

        fault = self._faults.take(server, request, REQUEST_FAULTS, allowed)
        chunk_delay = 0.0
        if fault is not None:
            applied.append(fault.kind)
            record.fault = fault.kind
        if fault is not None and fault.kind == "drop":
            return faults.drop(request)
        if fault is not None and fault.kind == "slow":
            chunk_delay = fault.chunk_delay
            if fault.delay:
                await asyncio.sleep(fault.delay)

        if fault is not None and fault.kind == "status":
            reply = faults.fault_reply(server, route, fault, self._realm.challenge)
        elif route.denial is not None:
            reply = route.denial
        else:
            reply = await route.handle()
        if server == "registry":
            reply.headers.setdefault("Docker-Distribution-API-Version", "registry/2.0")
        if fault is None or fault.kind != "status":
            header_fault = self._faults.take(server, request, ("header",), allowed)
            if header_fault is not None:
                applied.append(header_fault.kind)
                record.fault = "+".join(applied)
                reply.headers.update(header_fault.headers)

        body_fault = gate = None
        if request.method != "HEAD" and len(reply.body) > 0:
            body_fault = self._faults.take(server, request, BODY_FAULTS, allowed)
            if body_fault is not None:
                applied.append(body_fault.kind)
                record.fault = "+".join(applied)
                if body_fault.kind == "replace":
                    reply.body = body_fault.body
        if allowed:
            gate = self._gates.take(server, request)
        return await faults.send(request, record, reply, body_fault, chunk_delay, gate)
