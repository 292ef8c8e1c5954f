"""Docker Hub's rate-limit headers, and when the budget counts as used up (never for
ever: a window the upstream does not tell is a minute)."""

from __future__ import annotations

from mirror.ratelimit import (
    MAX_WINDOW_SECONDS,
    UNTOLD_WINDOW_SECONDS,
    RateLimit,
    parse_ratelimit,
)
from testkit.clock import FakeClock
from testkit.fakeupstream import FakeRegistry, Fault, Manifest
from tests.conftest import StartMirror


def test_docker_hub_headers_are_parsed_with_their_window() -> None:
    parsed = parse_ratelimit(
        {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "20;w=21600"}, now=1000.0
    )
    assert parsed == RateLimit(limit=100, remaining=20, window=21600, observed_at=1000.0)


def test_missing_or_malformed_headers_mean_no_limit() -> None:
    assert parse_ratelimit({}) is None
    assert parse_ratelimit({"ratelimit-limit": "100;w=21600"}) is None
    assert parse_ratelimit({"ratelimit-limit": "lots", "ratelimit-remaining": "1"}) is None


def test_budget_is_exhausted_at_the_floor_until_the_window_rolls_over() -> None:
    limit = RateLimit(limit=100, remaining=10, window=600, observed_at=1000.0)
    assert limit.exhausted(floor=10, now=1001.0)
    assert not limit.exhausted(floor=9, now=1001.0)
    assert not limit.exhausted(floor=10, now=1600.0)


def test_hostile_header_numbers_are_ignored_not_fatal() -> None:
    for bad in ("²", "1" * 5000, "-1", " ", "1e3"):
        assert parse_ratelimit({"ratelimit-limit": bad, "ratelimit-remaining": "1"}) is None
    weird_window = parse_ratelimit({"ratelimit-limit": "100;w=²", "ratelimit-remaining": "5"})
    assert weird_window is not None and weird_window.window == 0


def test_a_budget_without_a_window_defers_for_a_minute_not_forever() -> None:
    untold = parse_ratelimit({"ratelimit-limit": "100", "ratelimit-remaining": "0"}, now=1000.0)
    assert untold is not None and untold.window == 0
    assert untold.exhausted(floor=0, now=1000.0 + UNTOLD_WINDOW_SECONDS - 1)
    assert not untold.exhausted(floor=0, now=1000.0 + UNTOLD_WINDOW_SECONDS)


def test_an_absurd_window_is_taken_as_a_day_at_most() -> None:
    huge = RateLimit(limit=100, remaining=0, window=10**17, observed_at=0.0)
    assert huge.exhausted(floor=0, now=MAX_WINDOW_SECONDS - 1)
    assert not huge.exhausted(floor=0, now=MAX_WINDOW_SECONDS)


async def test_revalidation_resumes_after_a_windowless_exhausted_budget(
    start_mirror: StartMirror, upstream: FakeRegistry, alpine: Manifest
) -> None:
    """`ratelimit-remaining: 0` with no window: tags are served stale for the untold
    window's minute, then the upstream is asked again."""
    clock = FakeClock()
    upstream.add_fault(
        Fault(
            "header",
            method="HEAD",
            headers={"ratelimit-limit": "100", "ratelimit-remaining": "0"},
            times=1,
        )
    )
    mirror = await start_mirror(upstream.url, clock=clock, tag_ttl=10)
    path = "/v2/library/alpine/manifests/3.19"
    assert (await mirror.get(path)).status == 200
    upstream.reset_counts()
    clock.advance(11)
    deferred = await mirror.get(path)
    assert deferred.status == 200 and "rate limit" in deferred.headers["Warning"]
    assert upstream.requests == []
    clock.advance(UNTOLD_WINDOW_SECONDS)
    resumed = await mirror.get(path)
    assert resumed.status == 200 and "Warning" not in resumed.headers
    assert upstream.count(method="HEAD") == 1
