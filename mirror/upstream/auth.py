"""Upstream authentication: `WWW-Authenticate` challenges, bearer tokens and Basic auth.

Registries say how to authenticate in their 401 challenge. For Bearer (Docker Hub, ghcr.io,
quay.io) the mirror asks the challenge's realm for a token covering exactly one repository
scope and reuses it until shortly before it expires, so a pull of many blobs costs one token
request. Concurrent requests for the same scope share one token fetch. Credentials go only
to a realm the upstream may use (`realms`), and a token response is read whole, capped.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from mirror import observe
from mirror.singleflight import SingleFlight
from mirror.upstream.bodies import BodyTooLarge, read_capped
from mirror.upstream.credentials import ClientCredential
from mirror.upstream.realms import realm_refusal
from mirror.upstream.tokencache import Token, TokenCache

log = logging.getLogger(__name__)

# A token this close to expiry is renewed before use rather than risked.
RENEW_MARGIN_SECONDS = 30.0
# Per the token spec, a missing expires_in means 60 seconds.
DEFAULT_TOKEN_LIFETIME = 60.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

_PARAM_RE = re.compile(r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One challenge from a `WWW-Authenticate` header."""

    scheme: str  # lower-cased: "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a `WWW-Authenticate` value leniently: several challenges, quoted or bare
    values, missing `service`/`scope` (Artifact Registry and quay.io omit them)."""
    challenges: list[Challenge] = []
    rest = header.strip()
    while rest:
        scheme_match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not scheme_match:
            break
        scheme = scheme_match.group(1).lower()
        rest = rest[scheme_match.end() :]
        params: dict[str, str] = {}
        while True:
            match = _PARAM_RE.match(rest)
            if not match:
                break
            key, value = match.group(1).lower(), match.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[key] = value
            rest = rest[match.end() :]
        challenges.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return challenges


def basic_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


class TokenError(Exception):
    """The token realm refused or failed; the message is safe to show a client.
    `rejected`: the realm refused the credentials themselves (401/403)."""

    def __init__(self, message: str, *, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class Authenticator:
    """Holds one upstream's credentials, its last challenge and its token cache.

    Tokens are cached per (credential, scope) in a bounded LRU; the challenge learnt from
    the first 401 lets later scopes fetch their token up front instead of paying a 401
    round trip each. A request may bring a client's own credential (passthrough); its
    tokens are cached under the credential's keyed hash, never the secret.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        upstream: str,
        upstream_url: str,
        username: str | None,
        password: str | None,
        token_hosts: tuple[str, ...] = (),
        tokens: TokenCache | None = None,
    ) -> None:
        self._session = session
        self._upstream = upstream  # for metrics
        self._upstream_url = upstream_url
        self._token_hosts = token_hosts
        self._username = username
        self._password = password
        self._challenge: Challenge | None = None
        self._tokens = tokens if tokens is not None else TokenCache(margin=RENEW_MARGIN_SECONDS)
        self._fetches: SingleFlight[tuple[str, str], Token] = SingleFlight()
        self._refused_realms: set[str] = set()

    @property
    def has_credentials(self) -> bool:
        return self._username is not None

    async def authorization(
        self, scope: str | None, client: ClientCredential | None = None
    ) -> str | None:
        """The `Authorization` value to send for `scope` (with the client's credential
        when given, else the mirror's), or None when none is known to be needed yet."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self._basic(client)
        if challenge.scheme == "bearer":
            token = await self._token(challenge, scope, client)
            return f"Bearer {token.value}"
        return None

    def learn(self, www_authenticate: str, client: ClientCredential | None = None) -> bool:
        """Remember the challenge from a 401; False when it is not one the mirror can
        answer (unknown scheme, Bearer without realm, Basic without credentials)."""
        for challenge in parse_challenges(www_authenticate):
            if challenge.scheme == "bearer" and challenge.realm:
                self._challenge = challenge
                return True
            if challenge.scheme == "basic" and (self.has_credentials or client is not None):
                self._challenge = challenge
                return True
        return False

    def forget(self, scope: str | None, client: ClientCredential | None = None) -> None:
        """Drop the cached token for a scope after the registry rejected it."""
        self._tokens.pop(_key(scope, client))

    def _basic(self, client: ClientCredential | None) -> str | None:
        if client is not None:
            return basic_header(client.username, client.password)
        if self._username is None:
            return None
        return basic_header(self._username, self._password or "")

    async def _token(
        self, challenge: Challenge, scope: str | None, client: ClientCredential | None
    ) -> Token:
        key = _key(scope, client)
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        token = await self._fetches.run(key, lambda: self._fetch(challenge, scope, client))
        self._tokens.put(key, token)
        return token

    def _check_realm(self, realm: str) -> None:
        """Refuse a realm off the upstream's domain (or not https), logging it once."""
        reason = realm_refusal(realm, self._upstream_url, self._token_hosts)
        if reason is None:
            return
        if realm not in self._refused_realms and len(self._refused_realms) < 64:
            self._refused_realms.add(realm)
            log.warning("upstream %s: refusing to ask for a token: %s", self._upstream, reason)
        raise TokenError(f"the mirror sends no credentials there: {reason}")

    async def _fetch(
        self, challenge: Challenge, scope: str | None, client: ClientCredential | None
    ) -> Token:
        realm = challenge.realm
        assert realm is not None
        self._check_realm(realm)
        query: list[tuple[str, str]] = []
        if service := challenge.params.get("service"):
            query.append(("service", service))
        if scope:
            query.append(("scope", scope))
        headers = {}
        if basic := self._basic(client):
            headers["Authorization"] = basic
        started = time.monotonic()
        async with self._session.get(
            realm, params=query, headers=headers, allow_redirects=False
        ) as resp:
            elapsed = time.monotonic() - started
            observe.upstream_answered(self._upstream, "GET", "token", resp.status, elapsed)
            if resp.status != 200:
                rejected = resp.status in (401, 403)
                raise TokenError(f"token realm answered {resp.status}", rejected=rejected)
            try:
                body = await read_capped(resp, MAX_TOKEN_RESPONSE_BYTES)
            except BodyTooLarge:
                raise TokenError(
                    f"token response larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"
                ) from None
        return _parse_token(body, started)


def _key(scope: str | None, client: ClientCredential | None) -> tuple[str, str]:
    return (client.key if client is not None else "", scope or "")


def _parse_token(body: bytes, received_at: float) -> Token:
    """Read a token response. Expiry counts from when we asked, not from `issued_at`, so a
    skewed upstream clock cannot make every token look expired (or immortal)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise TokenError("token realm answered with invalid JSON") from None
    if not isinstance(data, dict):
        raise TokenError("token realm answered with unexpected JSON")
    value = data.get("token") or data.get("access_token")
    if not isinstance(value, str) or not value:
        raise TokenError("token realm answered without a token")
    lifetime = data.get("expires_in")
    if not isinstance(lifetime, int | float) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return Token(value=value, expires_at=received_at + float(lifetime))
