"""A client's own registry credentials, handed to the upstream for one request
(`client_credentials = "passthrough"`).

The secret lives only in memory for the request; everything the mirror keeps about a
credential (token cache, entitlement cache) is keyed by `key`, an HMAC of it under a random
per-process key, so neither the plain secret nor a plain hash of it is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

_PROCESS_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class ClientCredential:
    username: str
    password: str = field(repr=False)
    #: Keyed hash of (username, password): what caches are keyed by.
    key: str = field(repr=False)

    @classmethod
    def of(cls, username: str, password: str) -> ClientCredential:
        digest = hmac.new(
            _PROCESS_KEY, f"{username}\0{password}".encode(), hashlib.sha256
        ).hexdigest()
        return cls(username=username, password=password, key=digest)
