"""`/auth/token`: the mirror's own token realm, where clients trade a user's password for
a bearer token (Docker's token flow)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from mirror import errors
from mirror.config import Action
from mirror.errors import RegistryError
from mirror.server.auth.credentials import (
    BASIC_REALM,
    Challenges,
    authorization,
    decode_basic,
    safe_name,
    unauthorized,
)
from mirror.server.auth.logins import Logins, record_user
from mirror.server.auth.policy import Policy
from mirror.server.auth.tokens import Tokens
from mirror.upstream.routing import Router

MAX_SCOPES = 16  # scopes granted per token; more are ignored
MAX_SERVICE_LENGTH = 255


@dataclass(frozen=True)
class _TokenRequest:
    credentials: tuple[str, str] | None  # (user, password), if well formed
    scopes: list[str]
    service: object  # as given: checked before use


class TokenEndpoint:
    def __init__(
        self,
        logins: Logins,
        tokens: Tokens,
        policy: Policy,
        router: Router,
        challenges: Challenges,
    ) -> None:
        self._logins = logins
        self._tokens = tokens
        self._policy = policy
        self._router = router
        self._challenges = challenges

    async def token(self, request: web.Request) -> web.Response:
        """A token for the scopes the user may have: of the actions asked (`pull`, `push`,
        `delete`, or `*` for all), those the rules allow. A push or delete the token lacks
        gets `401 insufficient_scope` when it is used, a request the rules refuse `403`.
        Two ways to ask:

        - `GET /auth/token?service=...&scope=...` with Basic credentials (the token
          specification; Docker, skopeo, podman);
        - `POST /auth/token`, a form with `grant_type=password`, `username`, `password`,
          `service` and `scope` (the OAuth2 variant; containerd tries it first).
        """
        if request.method == "POST":
            asked = await _password_grant(request)
        else:
            asked = _basic_query(request)
        user = await self._logins.check(request, asked.credentials, BASIC_REALM)
        record_user(user)
        service = asked.service
        if not isinstance(service, str) or not service:
            service = self._challenges.service(request)
        service = service[:MAX_SERVICE_LENGTH]
        issued = self._tokens.issue(user, service, self._grant(user, asked.scopes))
        body = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": datetime.fromtimestamp(issued.issued_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _grant(self, user: str, requested: list[str]) -> list[dict[str, Any]]:
        """The `access` entries of a token: each requested repository scope with the
        actions asked for that the rules allow, as the name routes without `ns` (use
        decides again in any case). A scope asking more than allowed gets the rest, one
        allowing nothing gets no actions: never an error (the token specification)."""
        scopes = " ".join(requested).split()
        access = []
        for scope in scopes[:MAX_SCOPES]:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name or not safe_name(name):
                continue
            asked = set(actions.split(","))
            allowed = self._allowed(user, name)
            granted = [action for action in allowed if action in asked or "*" in asked]
            access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def _allowed(self, user: str, name: str) -> tuple[Action, ...]:
        try:
            repo = self._router.repository(name, None)
        except RegistryError:
            return ()
        return self._policy.actions(user, repo.upstream.host, repo.name)


async def _password_grant(request: web.Request) -> _TokenRequest:
    """The OAuth2 form of `POST /auth/token`."""
    form = await request.post()
    if form.get("grant_type") != "password":
        raise RegistryError(errors.UNSUPPORTED, "only grant_type=password is supported here")
    username, password = form.get("username"), form.get("password")
    credentials = None
    if isinstance(username, str) and isinstance(password, str) and username:
        credentials = (username, password)
    scopes = [s for s in form.getall("scope", []) if isinstance(s, str)]
    return _TokenRequest(credentials, scopes, form.get("service"))


def _basic_query(request: web.Request) -> _TokenRequest:
    """`GET /auth/token` with Basic credentials, as the token specification has it."""
    scheme, credentials = authorization(request)
    if scheme != "basic":
        raise unauthorized("log in with a user name and password", BASIC_REALM)
    scopes = request.query.getall("scope", [])
    return _TokenRequest(decode_basic(credentials), scopes, request.query.get("service"))
