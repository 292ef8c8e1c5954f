"""Passthrough upstreams (`client_credentials = "passthrough"`): each client pulls with its
own registry credentials, and sees only what the upstream lets those credentials see.

A request for such an upstream's repository without Basic credentials gets `401` with a
Basic challenge (so does `/v2/`, where `docker login` checks in). With them, the request's
repository is bound to the client's credential (`UpstreamRepo.credential`): every upstream
request made for it carries them, to that upstream's registry and its token service only.
Before anything of the repository is served, cached or not, the upstream must have accepted
that credential for the repository lately (`mirror.upstream.entitlement`). The catalog
never lists a passthrough upstream's repositories: their names may be private.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import observe
from mirror.errors import RegistryError
from mirror.reference import Digest, is_digest, parse_tag
from mirror.server import addressing
from mirror.server.auth.credentials import authorization, decode_basic, unauthorized
from mirror.server.auth.middleware import CATALOG_FILTER
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.entitlement import Entitlements
from mirror.upstream.routing import Router

CHALLENGE = 'Basic realm="registry credentials", charset="UTF-8"'
# What to ask the upstream per route: a referrers list is checked as the tag list is (the
# subject need not exist for its list to be readable).
_KINDS: dict[str, observe.UpstreamKind] = {
    "manifest": "manifest",
    "blob": "blob",
    "tags": "tags",
    "referrers": "tags",
}


class Passthrough:
    """The middleware binding client credentials and checking entitlement."""

    def __init__(self, hosts: frozenset[str], entitlements: Entitlements) -> None:
        self._hosts = hosts
        self._entitlements = entitlements

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.match_info.get("name") is None:
            return await self._unnamed(request, handler)
        repo = addressing.served_repository(request)
        if repo is None or not repo.upstream.passthrough:
            return await handler(request)
        decoded = _basic(request)
        if decoded is None:
            raise unauthorized(
                f"{repo.upstream.host} is pulled with your own registry credentials", CHALLENGE
            )
        bound = replace(repo, credential=ClientCredential.of(*decoded))
        request[addressing.REPOSITORY] = bound
        try:
            if (target := _target(request)) is not None:
                await self._entitlements.check(bound, *target)
            return await handler(request)
        except RegistryError as exc:
            if exc.status == 401:
                raise unauthorized(str(exc), CHALLENGE) from None
            raise

    async def _unnamed(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/v2", "/v2/") and _basic(request) is None:
            raise unauthorized("this mirror asks for your registry credentials", CHALLENGE)
        if request.path == "/v2/_catalog":
            earlier = request.get(CATALOG_FILTER)

            def visible(host: str, name: str) -> bool:
                return host not in self._hosts and (earlier is None or earlier(host, name))

            request[CATALOG_FILTER] = visible
        return await handler(request)


def _basic(request: web.Request) -> tuple[str, str] | None:
    scheme, credentials = authorization(request)
    return decode_basic(credentials) if scheme == "basic" else None


def _target(request: web.Request) -> tuple[observe.UpstreamKind, str] | None:
    """What to ask the upstream about for this request: (kind, tag or digest); None for a
    request the handler refuses anyway (a push, another method, a malformed reference)."""
    route = request.match_info.route.name
    kind = _KINDS.get(route or "")
    if kind is None or request.method not in ("GET", "HEAD"):
        return None
    reference = request.match_info.get("reference") or request.match_info.get("digest") or ""
    try:
        if kind == "blob" or (kind == "manifest" and is_digest(reference)):
            Digest.parse(reference)
        elif kind == "manifest":
            parse_tag(reference)
    except RegistryError:
        return None
    return kind, reference


def setup(app: web.Application, router: Router, *, clock: Callable[[], float] = time.time) -> None:
    """Add the middleware (innermost: after the repository is resolved and any client
    authentication) when an upstream is served with passthrough."""
    hosts = frozenset(u.host for u in router.upstreams if u.passthrough)
    if hosts:
        app.middlewares.append(Passthrough(hosts, Entitlements(clock=clock)).middleware)
