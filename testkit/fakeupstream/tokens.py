"""The token realm (Hub's auth.docker.io) and the registry's side of it: who may pull what.

In "bearer" mode the registry answers 401 with a challenge naming this realm; the realm
issues opaque tokens for the scopes asked for and allowed, which the registry then checks
per repository. "basic" checks a password on every registry request; "none" lets all in.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from aiohttp import web

from .wire import Reply, Route, error, fixed, json_body, text

AuthMode = Literal["bearer", "basic", "none"]
SERVICE = "fake.registry"


@dataclass
class _Grant:
    """What a bearer token allows, and until when."""

    access: dict[str, set[str]]
    expires_at: float
    user: str | None


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


class TokenRealm:
    """Issues tokens at ``/token`` and decides whether a registry request may pull."""

    def __init__(
        self,
        *,
        auth: AuthMode,
        users: Mapping[str, str],
        anonymous_pull: bool,
        token_expires_in: int,
        realm_url: Callable[[], str],
        private: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """`realm_url` gives the token endpoint's URL once the servers listen; `private`
        names the only users who may pull a repository."""
        if auth not in ("bearer", "basic", "none"):
            raise ValueError(f"unknown auth mode {auth!r}")
        self.auth = auth
        self.users: dict[str, str] = dict(users)
        self.anonymous_pull = anonymous_pull
        self.token_expires_in = token_expires_in
        self._realm_url = realm_url
        self._tokens: dict[str, _Grant] = {}
        self.private: dict[str, frozenset[str]] = {
            repo: frozenset(users) for repo, users in (private or {}).items()
        }

    def expire_tokens(self) -> None:
        """Make every issued token expired now."""
        for grant in self._tokens.values():
            grant.expires_at = 0.0

    # ------------------------------------------------------------ the registry's checks

    def challenge(self, repo: str | None, reason: str | None = None) -> str:
        """The WWW-Authenticate value for this auth mode, scoped to ``repo`` when known."""
        if self.auth == "basic":
            return 'Basic realm="fake"'
        value = f'Bearer realm="{self._realm_url()}",service="{SERVICE}"'
        if repo is not None:
            value += f',scope="repository:{repo}:pull"'
        if reason is not None:
            value += f',error="{reason}"'
        return value

    def check_access(self, request: web.Request, repo: str | None) -> Reply | None:
        """401 unless allowed to pull ``repo``; for the ping (repo None) any valid login will do."""
        if self.auth == "none":
            return None
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            creds = _basic_credentials(header)
            if creds is not None and self.users.get(creds[0]) == creds[1]:
                return None
            return error(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": self.challenge(repo)},
            )
        token = _bearer_token(header)
        grant = self._tokens.get(token) if token is not None else None
        if grant is not None and grant.expires_at <= time.time():
            grant = None
        if grant is not None and (repo is None or "pull" in grant.access.get(repo, ())):
            return None
        reason = None
        if token is not None:
            reason = "insufficient_scope" if grant is not None else "invalid_token"
        return error(
            401,
            "UNAUTHORIZED",
            "authentication required",
            {"WWW-Authenticate": self.challenge(repo, reason)},
        )

    # ------------------------------------------------------------ the token server

    def route(self, request: web.Request) -> Route:
        """Classify a token-server request."""
        if request.path != "/token":
            return Route("other", fixed(text(404, "404 page not found")))

        async def handle() -> Reply:
            return self._token(request)

        return Route("token", handle)

    def _token(self, request: web.Request) -> Reply:
        """Issue an opaque token granting the intersection of what was asked and what is allowed."""
        if request.method != "GET":
            return text(405, "method not allowed")
        service = request.query.get("service")
        if service is not None and service != SERVICE:
            return Reply(
                400, {"Content-Type": "application/json"}, json_body({"details": "invalid service"})
            )
        header = request.headers.get("Authorization", "")
        user: str | None = None
        allowed: set[str] = {"pull"} if self.anonymous_pull else set()
        if header:
            creds = _basic_credentials(header)
            if creds is None or self.users.get(creds[0]) != creds[1]:
                body = json_body({"details": "incorrect username or password"})
                return Reply(401, {"Content-Type": "application/json"}, body)
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
                if repo in self.private and user not in self.private[repo]:
                    granted = set()
                access.setdefault(repo, set()).update(granted)
        token = secrets.token_urlsafe(32)
        now = time.time()
        self._tokens[token] = _Grant(access, now + self.token_expires_in, user)
        issued = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        body = json_body(
            {
                "token": token,
                "access_token": token,
                "expires_in": self.token_expires_in,
                "issued_at": issued,
            }
        )
        return Reply(200, {"Content-Type": "application/json"}, body)
