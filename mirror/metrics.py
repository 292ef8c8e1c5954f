"""Every Prometheus metric the mirror exports, declared in one place.

Metrics register with the default registry when this module is first imported, so a metric
is declared exactly once however many components use it. Labels take values from small,
fixed sets (a route name, a result, a configured upstream host; never a repository or a
digest), so series stay bounded.

With several worker processes, prometheus-client's multiprocess mode aggregates the workers'
values (`collect`; `mirror serve` sets the mode up before anything imports this module);
each gauge says how its per-process values combine.

The layers below the server do not import this module: they report to `mirror.observe`,
and the server installs `PrometheusSink`, which counts their reports here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mirror.observe import (
    CacheKind,
    ClusterRole,
    ContentKind,
    Outcome,
    PoolName,
    PushKind,
    Revalidation,
    UpstreamKind,
)

# Latency buckets, seconds: sub-millisecond cache hits up to slow cold pulls.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

HTTP_REQUESTS = Counter(
    "mirror_http_requests_total",
    "Requests answered, by route (ping, manifest, blob, tags, catalog, ...), method and status.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "mirror_http_request_duration_seconds",
    "Time from a request's arrival until its response is fully sent.",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)

CACHE_HITS = Counter(
    "mirror_cache_hits_total",
    "Lookups answered from the cache without asking an upstream: blobs and manifests found "
    "in the store, tags whose record was fresh.",
    ["kind"],
)
CACHE_MISSES = Counter(
    "mirror_cache_misses_total",
    "Lookups that needed an upstream: blobs and manifests not in the store, tags without a "
    "fresh record (each costs an upstream request unless it joined one in flight).",
    ["kind"],
)
CACHE_COALESCED = Counter(
    "mirror_cache_coalesced_total",
    "Misses that joined an upstream fetch already in flight instead of starting their own.",
    ["kind"],
)
SERVED_BYTES = Counter(
    "mirror_served_bytes_total",
    "Body bytes of blobs sent to clients: source=cache from stored files, source=upstream "
    "streamed while their download was still arriving.",
    ["source"],
)
UPSTREAM_BYTES = Counter(
    "mirror_upstream_bytes_total",
    "Body bytes of blobs and manifests received from each upstream.",
    ["upstream"],
)
UPSTREAM_REQUESTS = Counter(
    "mirror_upstream_requests_total",
    "Requests sent to upstreams, by upstream host, method, kind (manifest, blob, tags, "
    'referrers, token) and status (the HTTP status, or "error" / "timeout" when there was '
    "no answer).",
    ["upstream", "method", "kind", "status"],
)
UPSTREAM_DURATION = Histogram(
    "mirror_upstream_request_duration_seconds",
    "Time until an upstream's response headers arrived (or it failed).",
    ["upstream", "kind"],
    buckets=_LATENCY_BUCKETS,
)
DOWNLOADS_IN_FLIGHT = Gauge(
    "mirror_upstream_downloads_in_flight",
    "Blob downloads from upstreams running now.",
    multiprocess_mode="livesum",
)
DOWNLOAD_WAITERS = Gauge(
    "mirror_download_waiters",
    "Clients streaming a blob that is still being downloaded (the one that started it too).",
    multiprocess_mode="livesum",
)
TAG_REVALIDATIONS = Counter(
    "mirror_tag_revalidations_total",
    "Tags checked upstream after their freshness ran out: unchanged, changed (a new digest), "
    "stale (the upstream failed and the cached answer was served), failed (nothing to serve).",
    ["upstream", "result"],
)
RATELIMIT_REMAINING = Gauge(
    "mirror_upstream_ratelimit_remaining",
    "Pulls left in the upstream's rate-limit window, as it last said (Docker Hub).",
    ["upstream"],
    multiprocess_mode="mostrecent",
)
RATELIMIT_LIMIT = Gauge(
    "mirror_upstream_ratelimit_limit",
    "Pulls allowed per rate-limit window, as the upstream last said (Docker Hub).",
    ["upstream"],
    multiprocess_mode="mostrecent",
)
EVICTIONS = Counter(
    "mirror_cache_evictions_total",
    "Objects evicted because the cache passed max_cache_size, by kind (blob, manifest).",
    ["kind"],
)
EVICTED_BYTES = Counter(
    "mirror_cache_evicted_bytes_total",
    "Bytes evicted because the cache passed max_cache_size, by kind.",
    ["kind"],
)
EVICTED_REFERENCED_BLOBS = Counter(
    "mirror_cache_evicted_referenced_blobs_total",
    "Evicted blobs that a still-cached manifest refers to (fetched again when pulled).",
)
PASSTHROUGH = Counter(
    "mirror_cache_passthrough_total",
    "Blob misses streamed from the upstream without being cached, because the data dir's "
    "free space was below min_free_space or the store (an S3 bucket) was unreachable.",
)
DOWNLOADS_ABANDONED = Counter(
    "mirror_downloads_abandoned_total",
    "Blob downloads cancelled when their last client left, because the downloads no client "
    "reads were beyond abandoned_downloads or abandoned_bytes.",
)
COLD_MISSES_REFUSED = Counter(
    "mirror_cold_misses_refused_total",
    "Blob GETs refused with 429 because their client already had max_cold_per_client cold "
    "misses in flight.",
)
META_STORE_ERRORS = Counter(
    "mirror_meta_store_errors_total",
    "Metadata store calls that failed and were answered without the store.",
    ["operation"],
)
POOL_EXHAUSTED = Counter(
    "mirror_upstream_pool_exhausted_total",
    "Requests answered 503 after waiting pool_timeout for a free upstream connection, by "
    "upstream and pool (blob: blob bodies; metadata: manifests, tokens, HEADs, tag lists).",
    ["upstream", "pool"],
)
NEGATIVE_HITS = Counter(
    "mirror_upstream_negative_hits_total",
    "Manifest and blob requests answered 404 from a remembered upstream 404 (negative_ttl) "
    "instead of asking the upstream again.",
    ["upstream"],
)
CIRCUIT_OPEN = Gauge(
    "mirror_upstream_circuit_open",
    "1 while the upstream's circuit breaker is open (repeated connection failures: requests "
    "fail fast until a probe succeeds), else 0. With several workers: 1 if any has it open.",
    ["upstream"],
    multiprocess_mode="livemax",
)
CIRCUIT_REJECTIONS = Counter(
    "mirror_upstream_circuit_rejections_total",
    "Requests failed fast (503) without contacting the upstream because its circuit was open.",
    ["upstream"],
)
S3_ORPHAN_UPLOADS_ABORTED = Counter(
    "mirror_s3_orphan_uploads_aborted_total",
    "Multipart uploads a crashed writer left pending in the bucket, aborted by this process "
    "(its janitor while serving, mirror gc, or a start).",
)
HOSTED_PUSHES = Counter(
    "mirror_hosted_pushes_total",
    "Pushes into hosted repositories, by kind: blob (an upload completed and verified), "
    "mount (a blob given from another repository, nothing uploaded), manifest (a manifest put).",
    ["kind"],
)
AUTH_FAILURES = Counter(
    "mirror_auth_failures_total",
    "Client requests refused by authentication (with htpasswd set), by reason: credentials "
    "(wrong password or unknown user), token (invalid or expired), scope (a valid token "
    "without the push or delete it was used for: 401), denied (logged in but not allowed: "
    "403), throttled (too many failures from the address: 429).",
    ["reason"],
)
CLUSTER_BLOB_JOINS = Counter(
    "mirror_cluster_blob_joins_total",
    "Blob misses by how they joined the cluster's one download of the blob: leader (this "
    "replica fetched it from the upstream), local_waiter (a client joined a download already "
    "running on this host), remote_waiter (this replica relayed another replica's download).",
    ["role"],
)
CLUSTER_LEASE_TAKEOVERS = Counter(
    "mirror_cluster_lease_takeovers_total",
    "Blob downloads this replica took over after their leader stopped renewing its lease "
    "(died, stalled or cut off), continuing from the bytes it had.",
)


# The series a request or a cache lookup counts into, looked up once per label set: on a
# cache hit, prometheus-client's `labels()` (a lock, a tuple, a dict) costs more than the
# count itself. Bounded, as a client's unknown methods could grow it (`labels()` keeps
# every series anyway).
_SERIES_KEPT = 1024


@functools.lru_cache(maxsize=_SERIES_KEPT)
def _request_series(route: str, method: str, status: str) -> tuple[Counter, Histogram]:
    return HTTP_REQUESTS.labels(route, method, status), HTTP_DURATION.labels(route, method)


def request_answered(route: str, method: str, status: str, seconds: float) -> None:
    """One request answered (`status`: its code, or "aborted"), `seconds` after it came."""
    requests, duration = _request_series(route, method, status)
    requests.inc()
    duration.observe(seconds)


@functools.lru_cache(maxsize=_SERIES_KEPT)
def _lookup_series(kind: CacheKind, outcome: Outcome) -> tuple[Counter, ...]:
    if outcome == "hit":
        return (CACHE_HITS.labels(kind),)
    if outcome == "coalesced":
        return CACHE_MISSES.labels(kind), CACHE_COALESCED.labels(kind)
    return (CACHE_MISSES.labels(kind),)


class PrometheusSink:
    """The `mirror.observe.Sink` that counts into the metrics above."""

    def cache_lookup(self, kind: CacheKind, outcome: Outcome) -> None:
        for series in _lookup_series(kind, outcome):
            series.inc()

    def served_bytes(self, count: int, *, from_cache: bool) -> None:
        SERVED_BYTES.labels("cache" if from_cache else "upstream").inc(count)

    def upstream_answered(
        self, upstream: str, method: str, kind: UpstreamKind, status: str, seconds: float
    ) -> None:
        UPSTREAM_REQUESTS.labels(upstream, method, kind, status).inc()
        UPSTREAM_DURATION.labels(upstream, kind).observe(seconds)

    def upstream_received(self, upstream: str, count: int) -> None:
        UPSTREAM_BYTES.labels(upstream).inc(count)

    def revalidated(self, upstream: str, result: Revalidation) -> None:
        TAG_REVALIDATIONS.labels(upstream, result).inc()

    def ratelimit_seen(self, upstream: str, limit: int, remaining: int) -> None:
        RATELIMIT_LIMIT.labels(upstream).set(limit)
        RATELIMIT_REMAINING.labels(upstream).set(remaining)

    def download_started(self) -> None:
        DOWNLOADS_IN_FLIGHT.inc()

    def download_ended(self) -> None:
        DOWNLOADS_IN_FLIGHT.dec()

    def waiter_joined(self) -> None:
        DOWNLOAD_WAITERS.inc()

    def waiter_left(self) -> None:
        DOWNLOAD_WAITERS.dec()

    def passed_through(self) -> None:
        PASSTHROUGH.inc()

    def download_abandoned(self) -> None:
        DOWNLOADS_ABANDONED.inc()

    def cold_miss_refused(self) -> None:
        COLD_MISSES_REFUSED.inc()

    def evicted(self, kind: ContentKind, size: int, *, referenced: bool) -> None:
        EVICTIONS.labels(kind).inc()
        EVICTED_BYTES.labels(kind).inc(size)
        if referenced:
            EVICTED_REFERENCED_BLOBS.inc()

    def meta_store_failed(self, operation: str) -> None:
        META_STORE_ERRORS.labels(operation=operation).inc()

    def pool_exhausted(self, upstream: str, pool: PoolName) -> None:
        POOL_EXHAUSTED.labels(upstream, pool).inc()

    def negative_hit(self, upstream: str) -> None:
        NEGATIVE_HITS.labels(upstream).inc()

    def circuit_changed(self, upstream: str, *, is_open: bool) -> None:
        CIRCUIT_OPEN.labels(upstream).set(1 if is_open else 0)

    def circuit_rejected(self, upstream: str) -> None:
        CIRCUIT_REJECTIONS.labels(upstream).inc()

    def blob_joined(self, role: ClusterRole) -> None:
        CLUSTER_BLOB_JOINS.labels(role).inc()

    def lease_taken_over(self) -> None:
        CLUSTER_LEASE_TAKEOVERS.inc()

    def orphan_upload_aborted(self) -> None:
        S3_ORPHAN_UPLOADS_ABORTED.inc()

    def hosted_pushed(self, kind: PushKind) -> None:
        HOSTED_PUSHES.labels(kind).inc()


# How much the cache holds, by kind ("blob", "manifest"): (objects, bytes). Read from the
# content store at scrape time rather than kept in a gauge.
Usage = Mapping[str, tuple[int, int]]


def multiprocess() -> bool:
    """Whether the workers' values are aggregated through files (several workers)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


class _Scrape(Collector):
    """Everything one scrape reports: the declared metrics (this process's, or every
    worker's summed through prometheus-client's multiprocess files) and cache usage."""

    def __init__(self, usage: Callable[[], Usage]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Metric]:
        if multiprocess():
            yield from MultiProcessCollector(None).collect()  # type: ignore[no-untyped-call]
        else:
            yield from REGISTRY.collect()
        usage = self._usage()
        size = GaugeMetricFamily(
            "mirror_cache_size_bytes", "Bytes of content in the cache, by kind.", labels=["kind"]
        )
        objects = GaugeMetricFamily(
            "mirror_cache_objects", "Objects in the cache, by kind.", labels=["kind"]
        )
        for kind, (count, nbytes) in sorted(usage.items()):
            size.add_metric([kind], nbytes)
            objects.add_metric([kind], count)
        yield size
        yield objects


def collect(usage: Callable[[], Usage]) -> CollectorRegistry:
    """A registry for one scrape (or one status page answer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(usage))
    return registry
