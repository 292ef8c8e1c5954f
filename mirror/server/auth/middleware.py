"""The authentication and authorisation middleware: who the request's user is (Basic
credentials or a token of this mirror), and whether the rules (and a token's scopes) let
them do what the request asks of the repository it addresses. Without `htpasswd` every
client is anonymous, and `anonymous_reads_only` refuses it every push and delete."""

from __future__ import annotations

import functools
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors, metrics
from mirror.config import Action
from mirror.errors import RegistryError
from mirror.server import addressing
from mirror.server.auth.actions import needed_action, scope_actions
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
from mirror.server.auth.tokens import Bearer, Tokens
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.peers import RELAY_PREFIX
from mirror.upstream.routing import UpstreamRepo

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"

# What the request's user may pull, as (host, repository) -> bool: what the catalog and the
# status page may list, and where a blob may be mounted from (set only when auth is on, or
# passthrough upstreams hide theirs).
CATALOG_FILTER: web.RequestKey[Callable[[str, str], bool]] = web.RequestKey("mirror.catalog_filter")


def may_pull(request: web.Request, repo: addressing.Target) -> bool:
    """Whether the request's client may pull `repo`: what a push route asks before mounting
    a blob from it (`from=`), falling back to a plain upload when not. Never a passthrough
    upstream's repository: only that upstream can say whether the client may have its
    content (see `passthrough`), and a mount does not ask it. Otherwise what the rules allow
    the user, or anyone, with authentication off."""
    if isinstance(repo, UpstreamRepo) and repo.upstream.passthrough:
        return False
    visible = request.get(CATALOG_FILTER)
    return visible is None or visible(repo.host, repo.name)


@web.middleware
async def anonymous_reads_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without `htpasswd`: every client is anonymous, and anonymous clients never push or
    delete. `403 DENIED`, not `401`: the mirror has no login that would help."""
    name = request.match_info.get("name")
    if name is not None and request.path.startswith("/v2/"):
        action = needed_action(request, name)
        repo = addressing.served_target(request)
        if action != "pull" and isinstance(repo, HostedRepo):
            refused = _refusal("anonymous clients", action, repo.qualified)
            raise RegistryError(
                errors.DENIED,
                f"{refused}: it authenticates no one (set htpasswd to let users push)",
            )
    return await handler(request)


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
        name = request.match_info.get("name") if registry else None
        action = needed_action(request, name) if name is not None else "pull"
        user, bearer = await self._authenticate(
            request, scope_actions(action) if registry else None
        )
        record_user(user)
        visible: Callable[[str, str], bool] = functools.partial(self._policy.allows, user, "pull")
        request[CATALOG_FILTER] = visible
        if name is not None:
            self._authorise(request, user, action, bearer, name)
        return await handler(request)

    async def _authenticate(
        self, request: web.Request, actions: str | None
    ) -> tuple[str, Bearer | None]:
        """The request's user, and its token if it came with one. `actions`: what the
        challenge of a registry route asks a token for; None on the other routes, whose
        challenge is Basic."""

        def challenge(error: str | None = None) -> str:
            if actions is None:
                return BASIC_REALM
            return self._challenges.bearer(request, actions=actions, error=error)

        scheme, credentials = authorization(request)
        if scheme == "bearer":
            bearer = self._tokens.verify(credentials)
            if bearer is None or not self._logins.passwords.has_user(bearer.user):
                metrics.AUTH_FAILURES.labels("token").inc()
                refused = challenge("invalid_token")
                raise unauthorized("the token is invalid or has expired", refused)
            return bearer.user, bearer
        if scheme == "basic":
            return await self._logins.check(request, decode_basic(credentials), challenge()), None
        raise unauthorized("authentication required", challenge())

    def _authorise(
        self, request: web.Request, user: str, action: Action, bearer: Bearer | None, name: str
    ) -> None:
        """The rules decide first: a user they refuse gets `403 DENIED`, final, since no
        token would help. A token must also carry a push or delete it is used for (pulls are
        the rules' alone, as they always were): one without gets `401` with an
        `insufficient_scope` challenge, and the client fetches one that does."""
        repo = addressing.served_target(request)
        if repo is None or (action != "pull" and not isinstance(repo, HostedRepo)):
            # Not served, not a valid name, or a write where nothing is written: the handler
            # says so (a push to a cached repository is `405 UNSUPPORTED` whoever sends it).
            return
        if not self._policy.allows(user, action, repo.host, repo.name):
            metrics.AUTH_FAILURES.labels("denied").inc()
            raise RegistryError(errors.DENIED, _refusal(f"user {user!r}", action, repo.qualified))
        if bearer is not None and action != "pull" and not bearer.grants(name, action):
            metrics.AUTH_FAILURES.labels("scope").inc()
            needed = f"repository:{name}:{scope_actions(action)}"
            challenge = self._challenges.bearer(
                request, actions=scope_actions(action), error="insufficient_scope"
            )
            raise RegistryError(
                errors.UNAUTHORIZED,
                f"the token does not grant {action} on {name}; ask for {needed}",
                detail=[{"Type": "repository", "Name": name, "Action": action}],
                headers={"WWW-Authenticate": challenge},
            )


def _refusal(who: str, action: Action, repository: str) -> str:
    what = {
        "pull": f"pull {repository} from",
        "push": f"push to {repository} on",
        "delete": f"delete from {repository} on",
    }[action]
    return f"{who} may not {what} this mirror"


def _route_path(request: web.Request) -> str:
    """The matched route's path pattern (`/v2/{name}/...`), or the request's own path."""
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else request.path
