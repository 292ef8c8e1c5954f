"""The mirror's own bearer tokens: JWTs signed with HMAC-SHA256, and their signing key.

A token names the user (`sub`), the scopes granted when it was issued (`access`) and an
expiry `token_ttl` seconds on. The key comes from `token_secret` when set (every process
and host with the same secret accepts the others' tokens) or else from a random key the
first process stores in `data_dir/token.key` (shared by the workers of one data dir).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror.config import Config

TOKEN_ISSUER = "mirror"
KEY_FILE = "token.key"  # in data_dir, when no token_secret is set
CLOCK_SKEW = 30.0  # seconds a token's times may be off between hosts
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True)
class IssuedToken:
    token: str
    issued_at: float
    expires_in: int


@dataclass(frozen=True)
class Bearer:
    """What a valid token says: its user, and the actions it was granted per repository
    (the names as the client asked for them, which is how its requests name them)."""

    user: str
    access: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def grants(self, name: str, action: str) -> bool:
        return action in self.access.get(name, frozenset())


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

    def verify(self, token: str) -> Bearer | None:
        """The user and grants of a valid, unexpired token of this mirror; None for anything
        else."""
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
        return Bearer(user, _repository_access(claims.get("access")))

    def _sign(self, signed: str) -> bytes:
        return hmac.digest(self._key, signed.encode(), hashlib.sha256)


def signing_key(config: Config) -> bytes:
    """The tokens' key: from `token_secret`, or the random one kept in the data dir."""
    if config.auth.token_secret is not None:
        return hmac.digest(config.auth.token_secret.encode(), b"mirror token signing key", "sha256")
    return stored_key(config.storage.data_dir / KEY_FILE)


def stored_key(path: Path) -> bytes:
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


def _repository_access(claim: object) -> dict[str, frozenset[str]]:
    """The `access` claim as repository name -> actions (entries of other types, or not
    well formed, grant nothing)."""
    access: dict[str, frozenset[str]] = {}
    for entry in claim if isinstance(claim, list) else []:
        if not isinstance(entry, dict) or entry.get("type") != "repository":
            continue
        name, actions = entry.get("name"), entry.get("actions")
        if isinstance(name, str) and isinstance(actions, list):
            granted = {action for action in actions if isinstance(action, str)}
            access[name] = access.get(name, frozenset()) | granted
    return access


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
