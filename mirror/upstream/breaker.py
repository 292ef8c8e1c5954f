"""A per-upstream circuit breaker: after `failures` connection failures in a row (refused,
DNS, TLS, connect timeout; never an HTTP answer, whatever its status) the upstream is not
contacted for a back-off period, then one probe request is let through. Success closes the
circuit; a failed probe opens it again for twice as long, up to `max_backoff`.

While it is open requests fail at once with a 503 naming the upstream, so a dead upstream
costs nothing per request and the cache's stale-if-error answers come without waiting for a
connect timeout. Per process, like the connections it protects.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from mirror import errors, observe
from mirror.upstream.failures import UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BreakerSettings:
    failures: int  # connection failures in a row that open the circuit; 0: never
    backoff: float  # seconds it first stays open
    max_backoff: float  # the cap for its doubling


class CircuitBreaker:
    """The circuit of one upstream: `admit` before a request, then `succeeded` (an HTTP
    answer came), `failed` (no connection) or, for neither, `finished`."""

    def __init__(
        self,
        upstream: str,
        name: str,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream  # the metrics label (the registry host)
        self._name = name  # what messages call it
        self._settings = settings
        self._clock = clock
        self._failures = 0
        self._backoff = settings.backoff
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def admit(self) -> bool:
        """Let a request through (True: it is the probe of an open circuit) or raise the
        503 that stands for it while the circuit is open."""
        if self._open_until is None:
            return False
        wait = self._open_until - self._clock()
        if wait > 0 or self._probing:
            observe.circuit_rejected(self._upstream)
            retry = max(1, math.ceil(wait))
            raise UpstreamError(
                errors.UPSTREAM_UNAVAILABLE,
                f"upstream {self._name} is unreachable ({self._failures} connection failures "
                f"in a row): not contacted again for {retry}s (circuit open)",
                headers={"Retry-After": str(retry)},
            )
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._probing = False
        if self._open_until is not None:
            self._open_until = None
            self._backoff = self._settings.backoff
            log.info("upstream %s answers again: circuit closed", self._name)
            observe.circuit_changed(self._upstream, is_open=False)

    def failed(self) -> None:
        self._failures += 1
        if self._probing:
            self._probing = False
            self._backoff = min(self._backoff * 2, self._settings.max_backoff)
            self._open(self._backoff)
        elif self._open_until is None and 0 < self._settings.failures <= self._failures:
            self._open(self._backoff)

    def finished(self, probe: bool) -> None:
        """A request ended with neither verdict (cancelled, or a fault after connecting
        that says nothing about reachability): a probe's turn passes to the next request."""
        if probe:
            self._probing = False

    def _open(self, seconds: float) -> None:
        first = self._open_until is None
        self._open_until = self._clock() + seconds
        if first:
            log.warning(
                "upstream %s: %d connection failures in a row, not contacted for %gs "
                "(circuit open)",
                self._name,
                self._failures,
                seconds,
            )
            observe.circuit_changed(self._upstream, is_open=True)
