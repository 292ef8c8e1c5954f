"""Remembering that an upstream said "no such manifest/blob" (404), so a flood of requests
for names that do not exist costs one upstream request per name and `ttl`, not one each.

Kept in process memory, one cache per upstream client: each worker process asks the
upstream once per name and `ttl` on its own (not shared across processes or replicas). A
name that appears upstream is seen once its entry expires, at most `ttl` later.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# Per upstream: enough for any real pull traffic, small enough (a few MB) that a flood of
# random names cannot grow the process; the least recently used entry goes first.
MAX_ENTRIES = 10_000

Key = tuple[str, str, str]  # (kind, repository, reference)


class NegativeCache:
    """An LRU of (kind, repository, reference) -> when the upstream's 404 stops counting."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[Key, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def missing(self, key: Key) -> bool:
        """Whether the upstream said `key` does not exist less than `ttl` ago."""
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._expiry[key]
            return False
        self._expiry.move_to_end(key)
        return True

    def remember(self, key: Key) -> None:
        """The upstream just answered 404 for `key` (nothing is kept when ttl is 0)."""
        if self._ttl <= 0:
            return
        self._expiry[key] = self._clock() + self._ttl
        self._expiry.move_to_end(key)
        while len(self._expiry) > self._max_entries:
            self._expiry.popitem(last=False)
