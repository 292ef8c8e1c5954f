"""Back-off for password guessing, per client address (an IPv6 client's /64)."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

FAILURES_BEFORE_BACKOFF = 5  # within FAILURE_WINDOW: the fifth failure starts it
FAILURE_WINDOW = 60.0  # seconds without a failure (or block) after which an address is forgiven
FIRST_BACKOFF = 2.0  # seconds, doubled with each further failure
MAX_BACKOFF = 300.0
TRACKED_CLIENTS = 10_000  # addresses remembered (least recently failing forgotten first)


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
