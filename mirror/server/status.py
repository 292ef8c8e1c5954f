"""The status page's numbers (`/api/status`), read from the same registry `/metrics` exposes
so the page and Prometheus never disagree."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from mirror import __version__, observe
from mirror.meta.store import AccessRecords, HostedContent, RateLimits, Replica, Replicas
from mirror.ratelimit import RateLimit
from mirror.upstream.client import UpstreamClient
from mirror.upstream.hosting import HOSTED

TOP_REPOSITORIES = 10
# The page lists this many hosted repositories (by name), and says whether there are more.
HOSTED_SHOWN = 50
# With auth on, a user's top list is read from this many of the most pulled repositories.
_TOP_CANDIDATES = 20 * TOP_REPOSITORIES
# Upstream answers that count as errors on the status page: no answer, throttling, 5xx.
_ERROR_STATUSES = frozenset({"error", "timeout", "429"})


class StatusRecords(AccessRecords, RateLimits, Replicas, HostedContent, Protocol):
    """What the page reads from the metadata store: the most-pulled repositories, the
    upstreams' shared rate-limit records, the live replicas and the hosted repositories."""


class Samples:
    """Sums over the samples of one scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._samples = [
            (sample.name, sample.labels, sample.value)
            for family in registry.collect()
            for sample in family.samples
        ]

    def total(
        self,
        name: str,
        where: Callable[[Mapping[str, str]], bool] | None = None,
        **labels: str,
    ) -> float:
        """The sum of `name`'s samples that have `labels` and pass `where`."""
        return sum(
            value
            for sample, have, value in self._samples
            if sample == name
            and all(have.get(k) == v for k, v in labels.items())
            and (where is None or where(have))
        )


async def build(
    samples: Samples,
    *,
    upstreams: Iterable[UpstreamClient],
    hosted_patterns: Iterable[str],
    meta: StatusRecords,
    replica: Replica,
    started_at: float,
    now: float,
    visible: Callable[[str, str], bool] | None = None,
) -> dict[str, Any]:
    """The `/api/status` document (its shape is what the status page reads). `visible`
    (host, repository) says which repositories the user may see: the ones the rules let
    them pull (None: all, as with auth off). `replica` is the process answering; the live
    replicas are those whose heartbeat the metadata store holds (0 while it fails).
    Hosted repositories are listed beside the upstreams, and marked `hosted` among the
    most pulled (named as clients pull them, `local/app`, where cached ones carry their
    registry host)."""
    hits = samples.total("mirror_cache_hits_total")
    misses = samples.total("mirror_cache_misses_total")
    lookups = hits + misses
    from_cache = samples.total("mirror_served_bytes_total", source="cache")
    streamed = samples.total("mirror_served_bytes_total", source="upstream")
    fetched = samples.total("mirror_upstream_bytes_total")
    served = from_cache + streamed
    blobs = _usage(samples, "blob")
    manifests = _usage(samples, "manifest")
    upstreams = tuple(upstreams)
    # A passthrough upstream's repository names may be private to the clients pulling them.
    hidden = frozenset(upstream.host for upstream in upstreams if upstream.passthrough)
    shown = _shown(visible, hidden)
    top = await _top(meta, shown)
    hosted, more = await _hosted(meta, shown)
    return {
        "version": __version__,
        "started_at": started_at,
        "uptime_seconds": round(now - started_at, 3),
        "replica": {"id": replica.id, "advertise_url": replica.url},
        "cluster": {"live_replicas": len(await meta.live_replicas())},
        "requests": {
            "total": int(lookups),
            "hits": int(hits),
            "misses": int(misses),
            "coalesced": int(samples.total("mirror_cache_coalesced_total")),
            "hit_ratio": round(hits / lookups, 4) if lookups else None,
        },
        "bytes": {
            "served": int(served),
            "from_cache": int(from_cache),
            "from_upstream": int(streamed),
            "fetched_upstream": int(fetched),
            # Each byte sent from a stored file is one the upstream did not send again.
            "saved": int(from_cache),
        },
        "cache": {
            "blobs": blobs,
            "manifests": manifests,
            "total_bytes": blobs["bytes"] + manifests["bytes"],
        },
        "upstreams": [await _upstream(samples, upstream, meta) for upstream in upstreams],
        "hosted": {"patterns": list(hosted_patterns), "repositories": hosted, "more": more},
        "top_repositories": [_top_entry(repo, pulls) for repo, pulls in top],
        "recent_errors": [
            {"time": failure.time, "upstream": failure.upstream, "message": failure.message}
            for failure in observe.recent_failures()
        ],
    }


async def _top(
    meta: AccessRecords, visible: Callable[[str, str], bool] | None
) -> list[tuple[str, int]]:
    if visible is None:
        return await meta.top_repositories(TOP_REPOSITORIES)
    candidates = await meta.top_repositories(_TOP_CANDIDATES)
    shown = [(repo, n) for repo, n in candidates if visible(*_split(repo))]
    return shown[:TOP_REPOSITORIES]


def _top_entry(qualified: str, pulls: int) -> dict[str, Any]:
    host, name = _split(qualified)
    if host == HOSTED:
        return {"repository": name, "pulls": pulls, "hosted": True}
    return {"repository": qualified, "pulls": pulls, "hosted": False}


async def _hosted(
    meta: HostedContent, visible: Callable[[str, str], bool] | None
) -> tuple[list[str], bool]:
    """The first `HOSTED_SHOWN` hosted repositories the user may see, and whether there
    are more."""
    found: list[str] = []
    last = ""
    while len(found) <= HOSTED_SHOWN:
        names = await meta.hosted_repositories(last=last, n=HOSTED_SHOWN + 1)
        found += [name for name in names if visible is None or visible(HOSTED, name)]
        if len(names) <= HOSTED_SHOWN:
            break
        last = names[-1]
    return found[:HOSTED_SHOWN], len(found) > HOSTED_SHOWN


def _shown(
    visible: Callable[[str, str], bool] | None, hidden: frozenset[str]
) -> Callable[[str, str], bool] | None:
    """What the user may see, less the upstreams whose repository names are hidden."""
    if not hidden:
        return visible
    return lambda host, name: host not in hidden and (visible is None or visible(host, name))


def _split(qualified: str) -> tuple[str, str]:
    """`host/name` -> (host, name)."""
    host, _, name = qualified.partition("/")
    return host, name


def _usage(samples: Samples, kind: str) -> dict[str, int]:
    return {
        "objects": int(samples.total("mirror_cache_objects", kind=kind)),
        "bytes": int(samples.total("mirror_cache_size_bytes", kind=kind)),
    }


async def _upstream(samples: Samples, upstream: UpstreamClient, meta: RateLimits) -> dict[str, Any]:
    def failed(labels: Mapping[str, str]) -> bool:
        status = labels.get("status", "")
        return status in _ERROR_STATUSES or status.startswith("5")

    # The shared record first: another process (or node) may have seen it more recently.
    ratelimit: RateLimit | None = await meta.get_rate_limit(upstream.host) or upstream.ratelimit
    return {
        "host": upstream.host,
        "url": upstream.url,
        "requests": int(samples.total("mirror_upstream_requests_total", upstream=upstream.host)),
        "errors": int(
            samples.total("mirror_upstream_requests_total", failed, upstream=upstream.host)
        ),
        "ratelimit": None
        if ratelimit is None
        else {
            "limit": ratelimit.limit,
            "remaining": ratelimit.remaining,
            "window_seconds": ratelimit.window,
        },
    }
