"""Docker Hub's rate-limit headers, and when the budget counts as used up."""

from __future__ import annotations

from mirror.ratelimit import RateLimit, parse_ratelimit


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
