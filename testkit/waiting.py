"""Waiting for something another task, thread or process makes happen: one bounded poll, async
and sync, that fails naming what did not happen.

Poll only what nothing announces (a file on disk, a process's readiness, a daemon's state);
where the code under test or a fake can announce it, wait on that instead (an
`asyncio.Event`, `FakeRegistry.wait_for_request`, `MirrorProcess.wait_for_log`). To let a
time-to-live pass, advance a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

INTERVAL = 0.02  # between two looks: short next to any timeout, long next to one look


class WaitTimeout(AssertionError):
    """What was waited for did not happen in time (an assertion: the test fails on it)."""


def _failure(message: str | Callable[[], str], within: float) -> WaitTimeout:
    text = message() if callable(message) else message
    return WaitTimeout(f"not within {within} s: {text}")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    *,
    within: float | None,
    message: str | Callable[[], str],
    interval: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T | None],
    *,
    within: float | None,
    message: str | Callable[[], str],
    interval: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T: ...


async def wait_until(
    predicate: Callable[[], object],
    *,
    within: float | None,
    message: str | Callable[[], str],
    interval: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> object:
    """Call `predicate` (plain or async) until it returns something truthy, and return that.

    Looks once more at the deadline, then raises `WaitTimeout` with `message` (a callable is
    called then, so it can show what the state was). `within` None: the caller bounds the
    wait (with `asyncio.timeout`). Exceptions of the `ignoring` types count as "not yet";
    any other exception ends the wait (a predicate raises to say "never", such as a process
    that exited)."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while True:
        last_look = deadline is not None and loop.time() >= deadline
        try:
            outcome = predicate()
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except ignoring:
            outcome = None
        if outcome:
            return outcome
        if last_look:
            assert within is not None
            raise _failure(message, within)
        pause = interval if deadline is None else min(interval, deadline - loop.time())
        await asyncio.sleep(max(0.0, pause))


def wait_until_sync(
    predicate: Callable[[], T | None],
    *,
    within: float,
    message: str | Callable[[], str],
    interval: float = INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The synchronous twin of `wait_until`, for callers without an event loop (the
    integration suite drives real processes from plain functions)."""
    deadline = time.monotonic() + within
    while True:
        last_look = time.monotonic() >= deadline
        try:
            outcome = predicate()
        except ignoring:
            outcome = None
        if outcome:
            return outcome
        if last_look:
            raise _failure(message, within)
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
