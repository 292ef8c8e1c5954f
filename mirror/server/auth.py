"""Client authentication and authorisation: off unless `htpasswd` is set.

With it, every request but `/healthz` and `/readyz` (and `/metrics`, unless `metrics_auth`)
needs a user of the htpasswd file, given one of two ways:

- **Basic** credentials on the request itself (curl, Prometheus, a browser on the status
  page, a client configured with them up front);
- a **Bearer token** the mirror issued at its own realm, `/auth/token`, in exchange for
  Basic credentials (`GET`) or a password grant form (`POST`, the OAuth2 variant). That is
  the Docker token flow: a registry route without credentials answers `401` with
  `WWW-Authenticate: Bearer realm=".../auth/token",service="...",
  scope="repository:<name>:pull"`, the client fetches a token there and retries with it.
  `docker login mirror:5000` is this flow against `GET /v2/`. Other routes (the status
  page, `/metrics`) challenge with `Basic`, which browsers and Prometheus answer.

Tokens are JWTs (HS256) naming the user (`sub`), the scopes granted when they were issued
(`access`), and an expiry `token_ttl` seconds on. The signing key comes from `token_secret`
when set (every process and host with the same secret accepts the others' tokens) or else
from a random key the first process stores in `data_dir/token.key` (shared by the workers
of one data dir).

Authorisation is decided at every use, from the user and the repository the request
addresses (routed exactly like the request itself, so `?ns=` and path prefixes count): the
first `auth_rules` entry matching user, upstream and repository decides; none matching
denies; no rules at all lets every user pull everything. So tokens issued before a restart
with changed rules obey the new rules, and a user removed from the htpasswd file (which is
re-read when it changes) loses access at once, tokens and all. Refusals are
the spec's JSON errors: `401 UNAUTHORIZED` with a challenge, `403 DENIED`, and `429
TOOMANYREQUESTS` with `Retry-After` for a client address whose passwords keep failing.

Credentials and tokens are never logged; the access line names the user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fnmatch
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors, metrics, observe
from mirror.config import AuthRule, Config
from mirror.errors import RegistryError
from mirror.server.htpasswd import Passwords
from mirror.upstream.routing import Router

log = logging.getLogger(__name__)

TOKEN_PATH = "/auth/token"
TOKEN_ISSUER = "mirror"
KEY_FILE = "token.key"  # in data_dir, when no token_secret is set
CLOCK_SKEW = 30.0  # seconds a token's times may be off between hosts
MAX_TOKEN_LENGTH = 8192
MAX_SCOPES = 16  # scopes granted per token; more are ignored
MAX_SERVICE_LENGTH = 255
BASIC_REALM = 'Basic realm="mirror", charset="UTF-8"'
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATH = "/metrics"

# Back-off for failing passwords, per client address.
FAILURES_BEFORE_BACKOFF = 5  # within FAILURE_WINDOW: the fifth failure starts it
FAILURE_WINDOW = 60.0  # seconds without a failure (or block) after which an address is forgiven
FIRST_BACKOFF = 2.0  # seconds, doubled with each further failure
MAX_BACKOFF = 300.0
TRACKED_CLIENTS = 10_000  # addresses remembered (least recently failing forgotten first)

_SAFE_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._/:-]{1,255}")


# What `GET /v2/_catalog` may list for the request's user, as (host, repository) -> bool
# (set only when auth is on).
CATALOG_FILTER: web.RequestKey[Callable[[str, str], bool]] = web.RequestKey("mirror.catalog_filter")


# --- who may pull what ----------------------------------------------------------------------


class Policy:
    """`auth_rules` and `auth_groups`: the first rule matching decides; none denies; no
    rules at all allow every authenticated user everything."""

    def __init__(self, rules: tuple[AuthRule, ...], groups: Mapping[str, tuple[str, ...]]) -> None:
        self._rules = rules
        self._groups_of: dict[str, set[str]] = {}
        for group, members in groups.items():
            for member in members:
                self._groups_of.setdefault(member, set()).add(group)

    def allows(self, user: str, host: str, repository: str) -> bool:
        if not self._rules:
            return True
        groups = self._groups_of.get(user, set())
        for rule in self._rules:
            if _matches(rule, user, groups, host, repository):
                return rule.access == "pull"
        return False


def _matches(rule: AuthRule, user: str, groups: set[str], host: str, repository: str) -> bool:
    who = user in rule.users or "*" in rule.users or not groups.isdisjoint(rule.groups)
    return (
        who
        and ("*" in rule.upstreams or host in rule.upstreams)
        and any(fnmatch.fnmatchcase(repository, glob) for glob in rule.repositories)
    )


# --- tokens ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class IssuedToken:
    token: str
    issued_at: float
    expires_in: int


class Tokens:
    """Signs and checks the mirror's own tokens: JWTs with HMAC-SHA256."""

    def __init__(self, key: bytes, ttl: float, *, clock: Callable[[], float] = time.time):
        self._key = key
        self._ttl = ttl
        self._clock = clock

    def issue(self, user: str, service: str, access: list[dict[str, Any]]) -> IssuedToken:
        now = self._clock()
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": service,
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + self._ttl),
            "jti": secrets.token_hex(12),
            "access": access,
        }
        header = {"alg": "HS256", "typ": "JWT"}
        signed = ".".join(_b64(_json(part)) for part in (header, claims))
        token = f"{signed}.{_b64(self._sign(signed))}"
        return IssuedToken(token, now, int(self._ttl))

    def verify(self, token: str) -> str | None:
        """The user a valid, unexpired token of this mirror names; None for anything else."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            return None
        signed, _, signature = token.rpartition(".")
        try:
            if not hmac.compare_digest(_unb64(signature), self._sign(signed)):
                return None
            header_text, payload_text = signed.split(".")
            header = json.loads(_unb64(header_text))
            claims = json.loads(_unb64(payload_text))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            return None
        if not isinstance(claims, dict) or claims.get("iss") != TOKEN_ISSUER:
            return None
        user, expires, not_before = claims.get("sub"), claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(user, str) or not user:
            return None
        if not isinstance(expires, int | float) or not isinstance(not_before, int | float):
            return None
        now = self._clock()
        if now > expires + CLOCK_SKEW or now < not_before - CLOCK_SKEW:
            return None
        return user

    def _sign(self, signed: str) -> bytes:
        return hmac.digest(self._key, signed.encode(), hashlib.sha256)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def signing_key(config: Config) -> bytes:
    """The tokens' key: from `token_secret`, or the random one kept in the data dir."""
    if config.token_secret is not None:
        return hmac.digest(config.token_secret.encode(), b"mirror token signing key", "sha256")
    return _stored_key(config.data_dir / KEY_FILE)


def _stored_key(path: Path) -> bytes:
    """The key in `path`, made first if there is none. Several processes starting at once
    agree: each writes a candidate and links it into place; the first link wins."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process was first: use its key
        finally:
            candidate.unlink()
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RuntimeError(f"{path} does not hold a token key; remove it to have a new one made")
    return key


# --- brute force ----------------------------------------------------------------------------


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0  # the latest failure
    backoff: float = 0.0  # seconds of the latest block
    blocked_until: float = 0.0
    checking: int = 0  # password checks running now


class Throttle:
    """Slows password guessing per client address: from the FAILURES_BEFORE_BACKOFF-th
    failure within FAILURE_WINDOW seconds on, the address's password attempts are answered
    429 for a back-off that doubles with each further failure (up to MAX_BACKOFF). A quiet
    FAILURE_WINDOW after the last failure or block forgives it. A success changes nothing (a
    guesser who knows one account cannot reset its count with it), and no address affects
    another's. Memory is bounded: only the TRACKED_CLIENTS most recent addresses are kept."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        failures: int = FAILURES_BEFORE_BACKOFF,
        window: float = FAILURE_WINDOW,
        first_backoff: float = FIRST_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        tracked: int = TRACKED_CLIENTS,
    ) -> None:
        self._clock = clock
        self._failures = failures
        self._window = window
        self._first = first_backoff
        self._max = max_backoff
        self._tracked = tracked
        self._clients: OrderedDict[str, _Failures] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try a password again; None if it may now."""
        entry = self._clients.get(client)
        if entry is None:
            return None
        now = self._clock()
        if now < entry.blocked_until:
            return entry.blocked_until - now
        if entry.checking >= self._failures:  # a burst of guesses in parallel
            return 1.0
        return None

    @contextlib.contextmanager
    def checking(self, client: str) -> Iterator[None]:
        entry = self._entry(client)
        entry.checking += 1
        try:
            yield
        finally:
            entry.checking -= 1

    def failed(self, client: str) -> float | None:
        """Count a failure; the back-off it starts, if any."""
        now = self._clock()
        entry = self._entry(client)
        if now - max(entry.last, entry.blocked_until) > self._window:
            entry.count, entry.backoff = 0, 0.0
        entry.count += 1
        entry.last = now
        if entry.count < self._failures:
            return None
        entry.backoff = min(self._max, entry.backoff * 2 if entry.backoff else self._first)
        entry.blocked_until = now + entry.backoff
        return entry.backoff

    def _entry(self, client: str) -> _Failures:
        entry = self._clients.get(client)
        if entry is None:
            entry = self._clients[client] = _Failures()
            while len(self._clients) > self._tracked:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(client)
        return entry


# --- the middleware and the token endpoint --------------------------------------------------


class ClientAuth:
    """Authentication for one application: its middleware and its token endpoint."""

    def __init__(
        self, config: Config, router: Router, *, clock: Callable[[], float] = time.time
    ) -> None:
        assert config.htpasswd is not None
        self.passwords = Passwords(config.htpasswd, clock=clock)
        self.policy = Policy(config.auth_rules, config.auth_groups)
        self.tokens = Tokens(signing_key(config), config.token_ttl, clock=clock)
        self.throttle = Throttle(clock=clock)
        # The key brute-force back-off is counted by: the peer's address (a proxy in front
        # makes all its clients one; tests swap this).
        self.client_key: Callable[[web.Request], str] = lambda request: request.remote or "-"
        self._router = router
        self._metrics_auth = config.metrics_auth
        self._realm = config.auth_realm
        self._listen = str(config.listen)

    def register(self, app: web.Application) -> None:
        app.router.add_get(TOKEN_PATH, self.token)
        app.router.add_post(TOKEN_PATH, self.token)
        app.middlewares.append(self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = _route_path(request)
        if path in OPEN_PATHS or path == TOKEN_PATH:  # the token endpoint checks by itself
            return await handler(request)
        if path == METRICS_PATH and not self._metrics_auth:
            return await handler(request)
        registry = path == "/v2" or path.startswith("/v2/")
        user = await self._authenticate(request, registry=registry)
        _record_user(user)
        if registry:
            self._authorise(request, user)
        return await handler(request)

    async def token(self, request: web.Request) -> web.Response:
        """A token for the scopes the user may have (pull at most; a scope the rules refuse
        is granted no actions, and a request using it gets 403). Two ways to ask:

        - `GET /auth/token?service=...&scope=...` with Basic credentials (the token
          specification; Docker, skopeo, podman);
        - `POST /auth/token`, a form with `grant_type=password`, `username`, `password`,
          `service` and `scope` (the OAuth2 variant; containerd tries it first).
        """
        if request.method == "POST":
            form = await request.post()
            if form.get("grant_type") != "password":
                raise RegistryError(
                    errors.UNSUPPORTED, "only grant_type=password is supported here"
                )
            username, password = form.get("username"), form.get("password")
            decoded = None
            if isinstance(username, str) and isinstance(password, str) and username:
                decoded = (username, password)
            scopes = [s for s in form.getall("scope", []) if isinstance(s, str)]
            service = form.get("service")
        else:
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "basic":
                raise _unauthorized("log in with a user name and password", BASIC_REALM)
            decoded = _decode_basic(credentials.strip())
            scopes = request.query.getall("scope", [])
            service = request.query.get("service")
        user = await self._check_password(request, decoded, BASIC_REALM)
        _record_user(user)
        if not isinstance(service, str) or not service:
            service = self._service(request)
        service = service[:MAX_SERVICE_LENGTH]
        issued = self.tokens.issue(user, service, self._grant(user, scopes))
        body = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": datetime.fromtimestamp(issued.issued_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    # --- authentication -------------------------------------------------------------------

    async def _authenticate(self, request: web.Request, *, registry: bool) -> str:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        challenge = self._bearer_challenge(request) if registry else BASIC_REALM
        if scheme == "bearer":
            user = self.tokens.verify(credentials)
            if user is None or not self.passwords.has_user(user):
                metrics.AUTH_FAILURES.labels("token").inc()
                raise _unauthorized(
                    "the token is invalid or has expired",
                    self._bearer_challenge(request, error="invalid_token")
                    if registry
                    else challenge,
                )
            return user
        if scheme == "basic":
            return await self._check_password(request, _decode_basic(credentials), challenge)
        raise _unauthorized("authentication required", challenge)

    async def _check_password(
        self, request: web.Request, decoded: tuple[str, str] | None, challenge: str
    ) -> str:
        """The user if `decoded` (user, password) is right; else 401, or 429 for an address
        whose logins keep failing (checked first: a blocked address's passwords are not
        even looked at)."""
        client = self.client_key(request)
        if (wait := self.throttle.retry_after(client)) is not None:
            metrics.AUTH_FAILURES.labels("throttled").inc()
            seconds = max(1, math.ceil(wait))
            raise RegistryError(
                errors.TOOMANYREQUESTS,
                f"too many failed logins from this address; try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )
        ok = False
        if decoded is not None:
            user, password = decoded
            ok = await self.passwords.check(
                user, password, guard=lambda: self.throttle.checking(client)
            )
        if ok and decoded is not None:
            return decoded[0]
        metrics.AUTH_FAILURES.labels("credentials").inc()
        # A name that is no user is not logged: it may be a password typed in the wrong box.
        known = decoded is not None and self.passwords.has_user(decoded[0])
        who = f"user {decoded[0]!r}" if known and decoded is not None else "an unknown user"
        log.warning("failed login for %s from %s", who, client)
        if (backoff := self.throttle.failed(client)) is not None:
            log.warning("repeated failed logins from %s: refusing them for %g s", client, backoff)
        raise _unauthorized("wrong user name or password", challenge)

    # --- authorisation --------------------------------------------------------------------

    def _authorise(self, request: web.Request, user: str) -> None:
        name = request.match_info.get("name")
        if name is None:
            if request.path.startswith("/v2/_catalog"):

                def visible(host: str, repo: str) -> bool:
                    return self.policy.allows(user, host, repo)

                request[CATALOG_FILTER] = visible
            return
        try:
            repo = self._router.repository(name, request.query.get("ns"))
        except RegistryError:
            return  # not served or not a valid name: the handler says so
        if not self.policy.allows(user, repo.upstream.host, repo.name):
            metrics.AUTH_FAILURES.labels("denied").inc()
            raise RegistryError(
                errors.DENIED, f"user {user!r} may not pull {repo.qualified} from this mirror"
            )

    def _grant(self, user: str, requested: list[str]) -> list[dict[str, Any]]:
        """The `access` entries of a token: each requested repository scope, with `pull` if
        the rules allow it as the name routes without `ns` (use decides in any case)."""
        scopes = " ".join(requested).split()
        access = []
        for scope in scopes[:MAX_SCOPES]:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name or not _SAFE_NAME.fullmatch(name):
                continue
            granted = []
            if "pull" in actions.split(","):
                try:
                    repo = self._router.repository(name, None)
                except RegistryError:
                    repo = None
                if repo is not None and self.policy.allows(user, repo.upstream.host, repo.name):
                    granted = ["pull"]
            access.append({"type": "repository", "name": name, "actions": granted})
        return access

    # --- challenges -----------------------------------------------------------------------

    def _service(self, request: web.Request) -> str:
        host = request.host
        return host if _SAFE_HOST.fullmatch(host) else self._listen

    def _bearer_challenge(self, request: web.Request, *, error: str | None = None) -> str:
        realm = self._realm or f"{request.scheme}://{self._service(request)}{TOKEN_PATH}"
        challenge = f'Bearer realm="{realm}",service="{self._service(request)}"'
        name = request.match_info.get("name")
        if name is not None and _SAFE_NAME.fullmatch(name):
            challenge += f',scope="repository:{name}:pull"'
        if error is not None:
            challenge += f',error="{error}"'
        return challenge


CLIENT_AUTH = web.AppKey("mirror.client_auth", ClientAuth)


def setup(
    app: web.Application,
    config: Config,
    router: Router,
    *,
    clock: Callable[[], float] = time.time,
) -> ClientAuth | None:
    """Switch client authentication on for `app` if `htpasswd` is set. Its middleware goes
    innermost, after the error middleware that renders its refusals as the spec's JSON."""
    if config.htpasswd is None:
        return None
    auth = ClientAuth(config, router, clock=clock)
    auth.register(app)
    app[CLIENT_AUTH] = auth
    users = len(auth.passwords.users)
    rules = f"{len(config.auth_rules)} rules" if config.auth_rules else "no rules: all may pull"
    log.info("client authentication on: %d users from %s, %s", users, config.htpasswd, rules)
    return auth


def _route_path(request: web.Request) -> str:
    """The matched route's path pattern (`/v2/{name}/...`), or the request's own path."""
    resource = getattr(request.match_info.route, "resource", None)
    return resource.canonical if resource is not None else request.path


def _decode_basic(credentials: str) -> tuple[str, str] | None:
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user else None


def _record_user(user: str) -> None:
    if (record := observe.current_request()) is not None:
        record.user = user


def _unauthorized(message: str, challenge: str) -> RegistryError:
    return RegistryError(errors.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})
