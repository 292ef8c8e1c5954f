"""The authentication and authorisation middleware: who the request's user is (Basic
credentials or a token of this mirror), and whether the rules let them pull what the
request addresses."""

from __future__ import annotations

import functools
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors, metrics
from mirror.errors import RegistryError
from mirror.server import addressing
from mirror.server.actions import required_action
from mirror.server.auth.credentials import (
    BASIC_REALM,
    TOKEN_PATH,
    Challenges,
    authorization,
    decode_basic,
    unauthorized,
)
from mirror.server.auth.logins import Logins, record_user
from mirror.server.auth.policy import Policy
from mirror.server.auth.tokens import Tokens
from mirror.upstream.peers import RELAY_PREFIX

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"

# What the catalog and the status page may list for the request's user, as
# (host, repository) -> bool (set only when auth is on).
CATALOG_FILTER: web.RequestKey[Callable[[str, str], bool]] = web.RequestKey("mirror.catalog_filter")


class AuthMiddleware:
    """Refuses requests without a user (401, with the challenge the route's clients
    answer) and registry requests the rules deny (403). Innermost: the error middleware
    outside renders its refusals, and the request's repository is resolved already."""

    def __init__(
        self,
        logins: Logins,
        tokens: Tokens,
        policy: Policy,
        challenges: Challenges,
        *,
        metrics_auth: bool,
    ) -> None:
        self._logins = logins
        self._tokens = tokens
        self._policy = policy
        self._challenges = challenges
        self._metrics_auth = metrics_auth

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _route_path(request)
        if path in OPEN_PATHS or path == TOKEN_PATH:  # the token endpoint checks by itself
            return await handler(request)
        if path.startswith(RELAY_PREFIX):  # other replicas: the cluster secret, checked there
            return await handler(request)
        if path == METRICS_PATH and not self._metrics_auth:
            return await handler(request)
        registry = path == "/v2" or path.startswith("/v2/")
        user = await self._authenticate(request, registry=registry)
        record_user(user)
        visible: Callable[[str, str], bool] = functools.partial(self._policy.allows, user)
        request[CATALOG_FILTER] = visible
        if registry:
            self._authorise(request, user)
        return await handler(request)

    async def _authenticate(self, request: web.Request, *, registry: bool) -> str:
        scheme, credentials = authorization(request)
        challenge = self._challenges.bearer(request) if registry else BASIC_REALM
        if scheme == "bearer":
            user = self._tokens.verify(credentials)
            if user is None or not self._logins.passwords.has_user(user):
                metrics.AUTH_FAILURES.labels("token").inc()
                if registry:
                    challenge = self._challenges.bearer(request, error="invalid_token")
                raise unauthorized("the token is invalid or has expired", challenge)
            return user
        if scheme == "basic":
            return await self._logins.check(request, decode_basic(credentials), challenge)
        raise unauthorized("authentication required", challenge)

    def _authorise(self, request: web.Request, user: str) -> None:
        if request.match_info.get("name") is None:
            return
        repo = addressing.served_target(request)
        if repo is None:
            return  # not served or not a valid name: the handler says so
        action = required_action(request)
        if not self._policy.allows(user, repo.host, repo.name):
            metrics.AUTH_FAILURES.labels("denied").inc()
            raise RegistryError(
                errors.DENIED, f"user {user!r} may not {action} {repo.qualified} from this mirror"
            )


def _route_path(request: web.Request) -> str:
    """The matched route's path pattern (`/v2/{name}/...`), or the request's own path."""
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else request.path
