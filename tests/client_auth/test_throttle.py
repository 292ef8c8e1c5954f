"""Brute force: failing logins back off per address, a burst of parallel guesses is cut short."""

from __future__ import annotations

import asyncio
import time

import pytest

from mirror.server import auth, htpasswd
from mirror.server.auth.throttle import (
    FAILURE_WINDOW,
    FAILURES_BEFORE_BACKOFF,
    FIRST_BACKOFF,
    Throttle,
)
from testkit.clock import FakeClock
from tests.client_auth.helpers import PASSWORDS, basic, client_auth, error_of
from tests.conftest import Client

# --- brute force ----------------------------------------------------------------------------


async def test_failing_logins_from_one_address_back_off_and_spare_other_addresses(
    secured: Client, clock: FakeClock
) -> None:
    client_auth(secured).logins.client_key = lambda request: request.headers.get("X-Client", "-")
    attacker, other = {"X-Client": "10.0.0.66"}, {"X-Client": "10.0.0.7"}
    for _ in range(FAILURES_BEFORE_BACKOFF):
        resp = await secured.get("/v2/", headers={**attacker, **basic("alice", "guess")})
        assert resp.status == 401
    # Now even the right password from there waits, at the realm too.
    for path in ("/v2/", auth.TOKEN_PATH):
        blocked = await secured.get(path, headers={**attacker, **basic("alice", "alice-secret-1")})
        assert (await error_of(blocked))[:2] == (429, "TOOMANYREQUESTS")
        assert blocked.headers["Retry-After"] == str(int(FIRST_BACKOFF))
    # Another address is not affected, nor are tokens already issued.
    ok = await secured.get("/v2/", headers={**other, **basic("alice", PASSWORDS["alice"])})
    assert ok.status == 200

    clock.advance(FIRST_BACKOFF)
    resp = await secured.get("/v2/", headers={**attacker, **basic("alice", "guess-again")})
    assert resp.status == 401
    blocked = await secured.get("/v2/", headers={**attacker, **basic("alice", "x")})
    assert blocked.headers["Retry-After"] == str(int(2 * FIRST_BACKOFF))  # doubled

    clock.advance(2 * FIRST_BACKOFF + FAILURE_WINDOW + 1)  # quiet for a window
    ok = await secured.get("/v2/", headers={**attacker, **basic("alice", PASSWORDS["alice"])})
    assert ok.status == 200


def test_throttle_doubles_to_a_cap_forgives_after_a_quiet_window_and_stays_bounded() -> None:
    clock = FakeClock()
    throttle = Throttle(clock=clock, failures=3, window=60, first_backoff=1, max_backoff=8)
    backoffs = [throttle.failed("a") for _ in range(7)]
    assert backoffs == [None, None, 1, 2, 4, 8, 8]
    assert throttle.retry_after("a") == 8
    assert throttle.retry_after("b") is None
    clock.advance(8)
    assert throttle.retry_after("a") is None
    clock.advance(59)
    assert throttle.failed("a") == 8  # within the window of the block's end: still doubling
    clock.advance(8 + 61)
    assert [throttle.failed("a") for _ in range(3)] == [None, None, 1]  # forgiven

    many = Throttle(clock=clock, tracked=100)
    for n in range(1000):
        many.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(many) == 100


async def test_a_burst_of_parallel_guesses_is_cut_short(
    secured: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 0
    real_check = htpasswd._check

    def slow(password: bytes, hashed: bytes) -> bool:
        nonlocal runs
        runs += 1
        time.sleep(0.1)
        return real_check(password, hashed)

    monkeypatch.setattr(htpasswd, "_check", slow)
    answers = await asyncio.gather(
        *(secured.get("/v2/", headers=basic("alice", f"guess-{n}")) for n in range(20))
    )
    statuses = sorted(r.status for r in answers)
    assert statuses.count(429) >= 10, statuses
    assert set(statuses) == {401, 429}
    assert runs <= 2 * FAILURES_BEFORE_BACKOFF
