"""What the mirror did, reported once: to the installed `Sink` (the server's Prometheus
metrics), the current request's record for its access-log line, and the latest upstream
failures for the status page.

Components call these functions where things happen (a cache lookup, an upstream answer)
instead of passing outcomes back up through every return value. The request being served
is found through a context variable that the HTTP middleware sets, so a lookup made on
behalf of a request shows up in that request's log line.

This module imports no metrics library: the layers below the server report here without
loading prometheus-client, which `mirror serve` with several workers may import only after
it has chosen multiprocess mode. Until the server installs its sink, counts are discarded
(a one-shot command has nobody to scrape them).
"""

from __future__ import annotations

import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol

CacheKind = Literal["blob", "manifest", "tag"]
Outcome = Literal["hit", "coalesced", "miss", "stale"]
UpstreamKind = Literal["manifest", "blob", "tags", "referrers", "token"]
Revalidation = Literal["unchanged", "changed", "stale", "failed"]
ContentKind = Literal["blob", "manifest"]
PoolName = Literal["blob", "metadata"]
ClusterRole = Literal["leader", "local_waiter", "remote_waiter"]
PushKind = Literal["blob", "mount", "manifest"]

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


class Sink(Protocol):
    """Where counts go: one method per thing worth counting (`mirror.metrics.PrometheusSink`
    turns them into the exported metrics). Each is called as the function of the same name
    below is; see there for what it means."""

    def cache_lookup(self, kind: CacheKind, outcome: Outcome) -> None: ...

    def served_bytes(self, count: int, *, from_cache: bool) -> None: ...

    def upstream_answered(
        self, upstream: str, method: str, kind: UpstreamKind, status: str, seconds: float
    ) -> None: ...

    def upstream_received(self, upstream: str, count: int) -> None: ...

    def revalidated(self, upstream: str, result: Revalidation) -> None: ...

    def ratelimit_seen(self, upstream: str, limit: int, remaining: int) -> None: ...

    def download_started(self) -> None: ...

    def download_ended(self) -> None: ...

    def waiter_joined(self) -> None: ...

    def waiter_left(self) -> None: ...

    def passed_through(self) -> None: ...

    def download_abandoned(self) -> None: ...

    def cold_miss_refused(self) -> None: ...

    def evicted(self, kind: ContentKind, size: int, *, referenced: bool) -> None: ...

    def meta_store_failed(self, operation: str) -> None: ...

    def pool_exhausted(self, upstream: str, pool: PoolName) -> None: ...

    def negative_hit(self, upstream: str) -> None: ...

    def circuit_changed(self, upstream: str, *, is_open: bool) -> None: ...

    def circuit_rejected(self, upstream: str) -> None: ...

    def blob_joined(self, role: ClusterRole) -> None: ...

    def lease_taken_over(self) -> None: ...

    def orphan_upload_aborted(self) -> None: ...

    def hosted_pushed(self, kind: PushKind) -> None: ...


class DiscardSink:
    """Counts nothing: the sink until the server installs its own."""

    def cache_lookup(self, kind: CacheKind, outcome: Outcome) -> None:
        pass

    def served_bytes(self, count: int, *, from_cache: bool) -> None:
        pass

    def upstream_answered(
        self, upstream: str, method: str, kind: UpstreamKind, status: str, seconds: float
    ) -> None:
        pass

    def upstream_received(self, upstream: str, count: int) -> None:
        pass

    def revalidated(self, upstream: str, result: Revalidation) -> None:
        pass

    def ratelimit_seen(self, upstream: str, limit: int, remaining: int) -> None:
        pass

    def download_started(self) -> None:
        pass

    def download_ended(self) -> None:
        pass

    def waiter_joined(self) -> None:
        pass

    def waiter_left(self) -> None:
        pass

    def passed_through(self) -> None:
        pass

    def download_abandoned(self) -> None:
        pass

    def cold_miss_refused(self) -> None:
        pass

    def evicted(self, kind: ContentKind, size: int, *, referenced: bool) -> None:
        pass

    def meta_store_failed(self, operation: str) -> None:
        pass

    def pool_exhausted(self, upstream: str, pool: PoolName) -> None:
        pass

    def negative_hit(self, upstream: str) -> None:
        pass

    def circuit_changed(self, upstream: str, *, is_open: bool) -> None:
        pass

    def circuit_rejected(self, upstream: str) -> None:
        pass

    def blob_joined(self, role: ClusterRole) -> None:
        pass

    def lease_taken_over(self) -> None:
        pass

    def orphan_upload_aborted(self) -> None:
        pass

    def hosted_pushed(self, kind: PushKind) -> None:
        pass


_sink: Sink = DiscardSink()
_current: ContextVar[RequestRecord | None] = ContextVar("mirror_request", default=None)
_recent_failures: deque[UpstreamFailure] = deque(maxlen=RECENT_ERRORS_KEPT)


def install(sink: Sink) -> Sink:
    """Send every count from now on to `sink` (the server does, as it starts); the sink it
    replaces is returned, so a test can put it back."""
    global _sink
    previous, _sink = _sink, sink
    return previous


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
    _sink.cache_lookup(kind, outcome)
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
    _sink.served_bytes(count, from_cache=from_cache)
    if (record := _current.get()) is not None:
        record.body_bytes += count


def upstream_answered(
    upstream: str, method: str, kind: UpstreamKind, status: int | str, seconds: float
) -> None:
    """One upstream request: its status (or "error"/"timeout") and time to headers."""
    _sink.upstream_answered(upstream, method, kind, str(status), seconds)


def upstream_received(upstream: str, count: int) -> None:
    """Body bytes of blobs and manifests received from `upstream`."""
    _sink.upstream_received(upstream, count)


def upstream_failed(upstream: str, message: str) -> None:
    """Keep the failure for the status page (the latest few, this process's)."""
    _recent_failures.appendleft(UpstreamFailure(time.time(), upstream, message))


def recent_failures() -> list[UpstreamFailure]:
    """Newest first."""
    return list(_recent_failures)


def revalidated(upstream: str, result: Revalidation) -> None:
    """A tag checked upstream after its freshness ran out: unchanged, changed (a new digest),
    stale (the upstream failed, the cached answer was served), failed (nothing to serve)."""
    _sink.revalidated(upstream, result)


def ratelimit_seen(upstream: str, limit: int, remaining: int) -> None:
    """The upstream's rate-limit budget as its latest answer said."""
    _sink.ratelimit_seen(upstream, limit, remaining)


def download_started() -> None:
    """A blob download from an upstream began (`download_ended` follows, whatever happens)."""
    _sink.download_started()


def download_ended() -> None:
    _sink.download_ended()


def waiter_joined() -> None:
    """A client began streaming a blob still being downloaded (`waiter_left` follows)."""
    _sink.waiter_joined()


def waiter_left() -> None:
    _sink.waiter_left()


def passed_through() -> None:
    """A blob miss streamed from the upstream without being cached (the disk is too full,
    or the store unreachable)."""
    _sink.passed_through()


def download_abandoned() -> None:
    """A blob download cancelled because its last client left and the downloads nobody
    reads were beyond `abandoned_downloads` / `abandoned_bytes`."""
    _sink.download_abandoned()


def cold_miss_refused() -> None:
    """A blob GET refused with 429: its client had `max_cold_per_client` cold misses in
    flight."""
    _sink.cold_miss_refused()


def evicted(kind: ContentKind, size: int, *, referenced: bool = False) -> None:
    """An object evicted for space; `referenced`: a blob a still-cached manifest names."""
    _sink.evicted(kind, size, referenced=referenced)


def meta_store_failed(operation: str) -> None:
    """A metadata store call failed and was answered without the store."""
    _sink.meta_store_failed(operation)


def pool_exhausted(upstream: str, pool: PoolName) -> None:
    """A request gave up waiting for a free connection of the upstream's `pool`."""
    _sink.pool_exhausted(upstream, pool)


def negative_hit(upstream: str) -> None:
    """A manifest or blob answered 404 from the upstream's remembered 404, without asking."""
    _sink.negative_hit(upstream)


def circuit_changed(upstream: str, *, is_open: bool) -> None:
    """The upstream's circuit breaker opened (connection failures) or closed (it answered)."""
    _sink.circuit_changed(upstream, is_open=is_open)


def circuit_rejected(upstream: str) -> None:
    """A request failed fast because the upstream's circuit is open."""
    _sink.circuit_rejected(upstream)


def blob_joined(role: ClusterRole) -> None:
    """A blob miss joined the cluster's one download of it: as the `leader` (this replica
    fetches it from the upstream), as a `local_waiter` (a client joining a download already
    running on this host) or as a `remote_waiter` (this replica relays another's download
    instead of fetching it)."""
    _sink.blob_joined(role)


def lease_taken_over() -> None:
    """A replica took over a blob's download whose leader stopped renewing its lease."""
    _sink.lease_taken_over()


def orphan_upload_aborted() -> None:
    """A multipart upload left pending in the bucket (its writer crashed) was aborted."""
    _sink.orphan_upload_aborted()


def hosted_pushed(kind: PushKind) -> None:
    """A hosted repository took a push: a blob uploaded, a blob mounted from another
    repository (nothing uploaded), or a manifest put."""
    _sink.hosted_pushed(kind)
