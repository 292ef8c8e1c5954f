"""Gates: a body held at a chosen offset until the test releases it.

Where a "slow" fault only makes a transfer likely to be in flight when the test acts, a gate
makes it certain: the answer stops after exactly `at` bytes, the test is told (`reached`),
does what it must while the upstream is mid-body (start more clients, kill a process), and
then lets the rest go (`release`).

    gate = hub.hold_body(at=len(blob.data) // 2, server="cdn", path_contains=blob.digest)
    ...
    await gate.wait_reached(within=10)  # the mirror has been sent half the blob
    gate.release()                      # and now the rest
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class BodyGate:
    """Holds the bodies of matching answers after `at` bytes until released; applies to
    `times` answers (None: every one), like a fault. Once released it holds nothing more."""

    at: int
    server: str = "cdn"
    path_contains: str | None = None
    times: int | None = 1
    hits: int = field(default=0, init=False)  # answers this gate has applied to
    held: int = field(default=0, init=False)  # answers waiting at the gate right now
    _reached: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _released: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.at < 0:
            raise ValueError(f"a gate holds after a number of bytes, not {self.at}")

    @property
    def reached(self) -> bool:
        """Some answer has sent its first `at` bytes and stopped there (or still waits)."""
        return self._reached.is_set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def release(self) -> None:
        """Let every held answer go on, and hold no more."""
        self._released.set()

    async def wait_reached(self, within: float) -> None:
        """Wait (at most `within` s) until an answer stands at the gate."""
        try:
            async with asyncio.timeout(within):
                await self._reached.wait()
        except TimeoutError:
            raise AssertionError(
                f"no answer reached the gate at byte {self.at} within {within} s "
                f"({self.server}, path containing {self.path_contains!r})"
            ) from None

    def matches(self, server: str, path: str) -> bool:
        return (
            not self.released
            and (self.times is None or self.hits < self.times)
            and self.server == server
            and (self.path_contains is None or self.path_contains in path)
        )

    async def hold(self) -> None:
        """Called by the answer that stands at the gate: wait until released."""
        self.held += 1
        self._reached.set()
        try:
            await self._released.wait()
        finally:
            self.held -= 1


class GateList:
    """The gates a test set, in order; the first live one matching an answer applies."""

    def __init__(self) -> None:
        self._gates: list[BodyGate] = []

    def add(self, gate: BodyGate) -> None:
        self._gates.append(gate)

    def clear(self) -> None:
        """Release every gate and forget them (nothing stays held after a test)."""
        for gate in self._gates:
            gate.release()
        self._gates.clear()

    def take(self, server: str, request: web.Request) -> BodyGate | None:
        for gate in self._gates:
            if gate.matches(server, request.path):
                gate.hits += 1
                return gate
        return None
