"""A bounded cache of upstream bearer tokens: least recently used first out, expired ones
dropped, so a flood of random repository names (one scope each) or of client credentials
(passthrough) cannot grow it without bound."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Enough for every repository a busy mirror pulls within a token's lifetime.
DEFAULT_MAX_TOKENS = 1024


@dataclass
class Token:
    value: str
    expires_at: float  # on the cache's clock (time.monotonic())


class TokenCache:
    """Tokens by key; a token within `margin` seconds of expiry counts as gone."""

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_TOKENS,
        margin: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_entries
        self._margin = margin
        self._clock = clock
        self._tokens: OrderedDict[tuple[str, str], Token] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, key: tuple[str, str]) -> Token | None:
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.expires_at - self._margin <= self._clock():
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def put(self, key: tuple[str, str], token: Token) -> None:
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        if len(self._tokens) > self._max:
            self._drop_expired()
        while len(self._tokens) > self._max:
            self._tokens.popitem(last=False)

    def pop(self, key: tuple[str, str]) -> None:
        self._tokens.pop(key, None)

    def _drop_expired(self) -> None:
        now = self._clock()
        for key in [k for k, t in self._tokens.items() if t.expires_at - self._margin <= now]:
            del self._tokens[key]
