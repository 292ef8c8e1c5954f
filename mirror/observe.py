"""What the mirror did, reported once: Prometheus metrics, the current request's record for
its access-log line, and the latest upstream failures for the status page.

Components call these functions where things happen (a cache lookup, an upstream answer)
instead of passing outcomes back up through every return value. The request being served
is found through a context variable that the HTTP middleware sets, so a lookup made on
behalf of a request shows up in that request's log line.
"""

from __future__ import annotations

import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from mirror import metrics

CacheKind = Literal["blob", "manifest", "tag"]
Outcome = Literal["hit", "coalesced", "miss", "stale"]
UpstreamKind = Literal["manifest", "blob", "tags", "token"]

# A request's outcome is the most telling of its lookups: a manifest pull whose tag was
# fresh (hit) but whose manifest had to be fetched (miss) is a miss.
_RANK: dict[Outcome, int] = {"hit": 0, "coalesced": 1, "miss": 2, "stale": 3}
RECENT_ERRORS_KEPT = 20


@dataclass
class RequestRecord:
    """What happened while serving one request; the access log prints it."""

    request_id: str
    route: str = "other"
    outcome: Outcome | None = None
    upstream: str | None = None  # the registry the request was routed to
    body_bytes: int = 0
    user: str | None = None  # who the client authenticated as (client authentication on)
    aborted: bool = False  # the body was cut off (its download failed): not a good answer


@dataclass(frozen=True)
class UpstreamFailure:
    time: float  # unix time
    upstream: str
    message: str


_current: ContextVar[RequestRecord | None] = ContextVar("mirror_request", default=None)
_recent_failures: deque[UpstreamFailure] = deque(maxlen=RECENT_ERRORS_KEPT)


def begin_request(record: RequestRecord) -> None:
    """Make `record` the current request's (the middleware calls this first)."""
    _current.set(record)


def current_request() -> RequestRecord | None:
    return _current.get()


def routed(upstream: str) -> None:
    if (record := _current.get()) is not None:
        record.upstream = upstream


def cache_lookup(kind: CacheKind, outcome: Outcome) -> None:
    """Count one lookup. A coalesced lookup is a miss that joined an upstream fetch already
    in flight; a stale one is a tag the upstream failed to confirm."""
    if outcome == "hit":
        metrics.CACHE_HITS.labels(kind).inc()
    else:
        metrics.CACHE_MISSES.labels(kind).inc()
        if outcome == "coalesced":
            metrics.CACHE_COALESCED.labels(kind).inc()
    record = _current.get()
    if record is not None and (record.outcome is None or _RANK[outcome] > _RANK[record.outcome]):
        record.outcome = outcome


def aborted() -> None:
    """The current response was cut off before its end, on purpose (a failed download):
    its status line said 200, but the client got no blob."""
    if (record := _current.get()) is not None:
        record.aborted = True


def served_bytes(count: int, *, from_cache: bool) -> None:
    """Blob body bytes sent to a client."""
    metrics.SERVED_BYTES.labels("cache" if from_cache else "upstream").inc(count)
    if (record := _current.get()) is not None:
        record.body_bytes += count


def upstream_answered(
    upstream: str, method: str, kind: UpstreamKind, status: int | str, seconds: float
) -> None:
    """One upstream request: its status (or "error"/"timeout") and time to headers."""
    metrics.UPSTREAM_REQUESTS.labels(upstream, method, kind, str(status)).inc()
    metrics.UPSTREAM_DURATION.labels(upstream, kind).observe(seconds)


def upstream_received(upstream: str, count: int) -> None:
    metrics.UPSTREAM_BYTES.labels(upstream).inc(count)


def upstream_failed(upstream: str, message: str) -> None:
    """Keep the failure for the status page (the latest few, this process's)."""
    _recent_failures.appendleft(UpstreamFailure(time.time(), upstream, message))


def recent_failures() -> list[UpstreamFailure]:
    """Newest first."""
    return list(_recent_failures)


def revalidated(upstream: str, result: Literal["unchanged", "changed", "stale", "failed"]) -> None:
    metrics.TAG_REVALIDATIONS.labels(upstream, result).inc()


def ratelimit_seen(upstream: str, limit: int, remaining: int) -> None:
    metrics.RATELIMIT_LIMIT.labels(upstream).set(limit)
    metrics.RATELIMIT_REMAINING.labels(upstream).set(remaining)


def download_started() -> None:
    metrics.DOWNLOADS_IN_FLIGHT.inc()


def download_ended() -> None:
    metrics.DOWNLOADS_IN_FLIGHT.dec()


def waiter_joined() -> None:
    metrics.DOWNLOAD_WAITERS.inc()


def waiter_left() -> None:
    metrics.DOWNLOAD_WAITERS.dec()


def passed_through() -> None:
    metrics.PASSTHROUGH.inc()
