"""What a request presents (Basic credentials or a bearer token in `Authorization`) and how
a refusal asks for it (the `WWW-Authenticate` challenges)."""

from __future__ import annotations

import base64
import binascii
import re

from aiohttp import web

from mirror import errors
from mirror.errors import RegistryError

TOKEN_PATH = "/auth/token"  # the mirror's own token realm
BASIC_REALM = 'Basic realm="mirror", charset="UTF-8"'

_SAFE_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._/:-]{1,255}")


def authorization(request: web.Request) -> tuple[str, str]:
    """The `Authorization` header's scheme (lower case) and credentials."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower(), credentials.strip()


def decode_basic(credentials: str) -> tuple[str, str] | None:
    """(user, password) from Basic credentials; None if they are not well formed."""
    try:
        text = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep and user else None


def safe_name(name: str) -> bool:
    """Whether a repository name may be quoted in a challenge or a token's scope."""
    return _SAFE_NAME.fullmatch(name) is not None


def unauthorized(message: str, challenge: str) -> RegistryError:
    return RegistryError(errors.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


class Challenges:
    """The Bearer challenge of the registry routes: where the token realm is and which
    service and scope to ask it for."""

    def __init__(self, realm: str | None, listen: str) -> None:
        self._realm = realm  # configured; else the mirror's own, at the address asked
        self._listen = listen

    def service(self, request: web.Request) -> str:
        """The service tokens are issued for: the host the client asked, if it is tame."""
        host = request.host
        return host if _SAFE_HOST.fullmatch(host) else self._listen

    def bearer(
        self, request: web.Request, *, actions: str = "pull", error: str | None = None
    ) -> str:
        """The challenge for `request`; on a repository's route its scope asks for
        `actions` there (what the request needs, see `actions.scope_actions`)."""
        realm = self._realm or f"{request.scheme}://{self.service(request)}{TOKEN_PATH}"
        challenge = f'Bearer realm="{realm}",service="{self.service(request)}"'
        name = request.match_info.get("name")
        if name is not None and safe_name(name):
            challenge += f',scope="repository:{name}:{actions}"'
        if error is not None:
            challenge += f',error="{error}"'
        return challenge
