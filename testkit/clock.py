"""Time that moves only when a test says so: freshness, expiry and back-off without sleeping."""

from __future__ import annotations

import time


class FakeClock:
    """A clock for components that take one (`clock=`): unix time from now, or any origin."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
