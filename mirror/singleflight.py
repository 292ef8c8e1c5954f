"""Single-flight: concurrent callers asking for the same key share one call's result.

Used wherever many clients arrive at once for the same thing that costs an upstream
request: a token for a scope, a manifest by digest. (Blob downloads share more than a result,
a growing file, and have their own registry in `cache.blobs`.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """At most one call per key in flight; later callers await the same future."""

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Future[V]] = {}

    def in_flight(self, key: K) -> bool:
        """Whether a call for `key` is running: `run` would join it."""
        return key in self._calls

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """Join the call in flight for `key`, or start `call()`. The call runs to the end even
        if the caller that started it is cancelled (a client going away), so the others
        still get its result."""
        pending = self._calls.get(key)
        if pending is None:
            pending = asyncio.ensure_future(call())
            self._calls[key] = pending
            pending.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(pending)

    def _finished(self, key: K, done: asyncio.Future[V]) -> None:
        if self._calls.get(key) is done:
            del self._calls[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "never retrieved" warning if every caller left
