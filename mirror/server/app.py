"""The aiohttp application: routes and middleware over the parts `mirror.wiring` builds, and
the background work that runs beside them, with their lifetimes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from mirror import metrics, observe, wiring
from mirror.cache.eviction import Evictor
from mirror.cache.pinning import pinned_digests
from mirror.cache.prefetch.schedule import schedule as schedule_prefetch
from mirror.config import Config
from mirror.config.cluster import read_cluster_secret
from mirror.meta.store import Locks, Replica, Replicas
from mirror.reference import Digest
from mirror.server import addressing, auth
from mirror.server.auth import passthrough
from mirror.server.coldmisses import ColdMissLimit
from mirror.server.hosted import HostedRoutes
from mirror.server.middleware import add_response_headers, observe_requests, registry_errors
from mirror.server.ops import OpsRoutes
from mirror.server.referrers import ReferrersRoutes
from mirror.server.relay import RelayRoutes
from mirror.server.routes import RegistryRoutes
from mirror.server.uploads import UploadRoutes
from mirror.storage import ContentStore
from mirror.upstream.lists import PRUNE_INTERVAL_SECONDS

log = logging.getLogger(__name__)

# How often the cache's size is measured from disk, by one process of a replica (between,
# every process on the data dir counts its commits and removals in the store's shared
# count; a measurement also picks up what changed otherwise).
MEASURE_INTERVAL_SECONDS = 300.0


async def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    remove_temp_files: bool = True,
    replica: Replica | None = None,
) -> web.Application:
    """An application serving `config`: the parts `mirror.wiring` builds, the routes in
    front of them and the background work beside them. Async because the upstream sessions
    and the metadata store must be opened inside the event loop that will use them. `clock`
    (unix time) is what freshness is measured with; tests pass their own. A worker of
    several does not remove temp files (its siblings may be writing them), and is given
    the replica it serves as (its supervisor's, shared by its siblings).

    Raises MetaStoreError when a configured Redis cannot be reached.
    """
    observe.install(metrics.PrometheusSink())  # what the layers below report is exported
    mirror = await wiring.build(
        config, clock=clock, remove_temp_files=remove_temp_files, replica=replica
    )
    router = mirror.router
    app = web.Application(
        middlewares=[observe_requests, registry_errors, addressing.resolve_repositories(router)]
    )
    app.on_response_prepare.append(add_response_headers)
    app.on_response_prepare.append(addressing.echo_namespace)
    cold_misses = ColdMissLimit(config.limits.max_cold_per_client, config.auth.trusted_proxies)
    UploadRoutes(router, mirror.hosted, mirror.uploads).register(app.router)
    RegistryRoutes(
        router,
        mirror.blobs,
        mirror.manifests,
        mirror.tags,
        mirror.meta,
        cold_misses,
        HostedRoutes(mirror.hosted),
        mirror.meta,
        mirror.access,
        redirects=mirror.redirects,
    ).register(app.router)
    ReferrersRoutes(mirror.referrers).register(app.router)
    OpsRoutes(
        mirror.store, mirror.meta, router, mirror.access, mirror.replica, clock=clock
    ).register(app.router)
    RelayRoutes(mirror.blobs, _cluster_secret(config), clock=clock).register(app.router)
    auth.setup(app, config, router, clock=clock)  # client authentication, if configured
    passthrough.setup(app, router, clock=clock)  # clients' own upstream credentials, if any
    work = _Background(mirror, clock)
    app.on_startup.append(work.start)
    app.on_shutdown.append(work.abort_downloads)
    app.on_cleanup.append(work.close)
    served = ", ".join(f"{u.host} ({u.name})" for u in router.upstreams)
    mode = (
        f"offline, cache only, for {served}" if config.freshness.offline else f"mirroring {served}"
    )
    backend = "Redis" if config.storage.redis_url else "embedded SQLite"
    log.info("%s into %s; metadata in %s", mode, mirror.store.location, backend)
    return app


def _cluster_secret(config: Config) -> str | None:
    """The secret the relay endpoint checks (the config's check read it once already)."""
    cluster = config.cluster
    return read_cluster_secret(cluster.cluster_secret, cluster.cluster_secret_file, {})


class _Background:
    """What runs beside the requests: access records, cache measuring, pruning the kept tag
    lists, eviction, the janitor of orphaned uploads (S3) and the prefetch schedule;
    stopped in the order shutdown needs."""

    def __init__(self, mirror: wiring.Mirror, clock: Callable[[], float]) -> None:
        self._mirror = mirror
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefetching: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        return task

    async def start(self, _: web.Application) -> None:
        mirror, config = self._mirror, self._mirror.config
        mirror.access.start()
        # The workers share the store's count and the kept lists: one measures the store
        # (per replica: each replica counts a bucket in its own data dir), one prunes.
        self._spawn(
            _each_interval(
                lambda: _measure_cache(mirror.store),
                mirror.meta,
                f"measure:{mirror.replica.id}",
                MEASURE_INTERVAL_SECONDS,
            ),
            "measure-cache",
        )
        self._spawn(
            _each_interval(mirror.lists.prune, mirror.meta, "prune-lists", PRUNE_INTERVAL_SECONDS),
            "prune-tag-lists",
        )
        self._spawn(
            _heartbeat(mirror.meta, mirror.replica, config.cluster.cluster_lease), "heartbeat"
        )
        if config.cache.max_cache_size > 0:
            evictor = Evictor(
                mirror.store,
                mirror.meta,
                max_bytes=config.cache.max_cache_size,
                low_water=config.cache.cache_low_water,
                pinned=lambda: _kept(config, mirror),
                before_pass=mirror.access.flush,
                clock=self._clock,
            )
            self._spawn(evictor.run_forever(), "evict")
        if config.hosting.hosted:
            self._spawn(mirror.uploads.run_forever(), "sweep-expired-uploads")
        if mirror.janitor is not None:
            self._spawn(mirror.janitor.run_forever(), "abort-orphaned-uploads")
        if config.prefetch.prefetch:
            work = schedule_prefetch(config, mirror.puller(), mirror.meta, mirror.access)
            self._prefetching.add(self._spawn(work, "prefetch"))

    async def abort_downloads(self, _: web.Application) -> None:
        """on_shutdown runs before the server waits for open requests, so streaming clients
        are cut off at once instead of holding shutdown until their downloads finish. The
        prefetch schedule stops first: it must not start downloads after this."""
        for task in self._prefetching:
            task.cancel()
        await asyncio.gather(*self._prefetching, return_exceptions=True)
        await self._mirror.blobs.close()

    async def close(self, _: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._mirror.close()


async def _kept(config: Config, mirror: wiring.Mirror) -> set[Digest]:
    """What eviction never removes: the pinned images, and everything a hosted repository
    holds (pushed content has no upstream to fetch it again from). Without the hosted
    records nothing may go: their store's failure (MetaStoreError) ends the pass."""
    kept = await pinned_digests(config, mirror.store, mirror.meta)
    return kept | {Digest.parse(digest) for digest in await mirror.meta.hosted_digests()}


async def _heartbeat(replicas: Replicas, replica: Replica, lease: float) -> None:
    """Count as a live replica while running: a heartbeat every third of `lease`, each
    lasting a whole one (a replica stopped or killed drops out within it)."""
    while True:
        await replicas.heartbeat(replica, lease)
        await asyncio.sleep(lease / 3)


async def _each_interval(
    work: Callable[[], Awaitable[None]], locks: Locks, lock: str, interval: float
) -> None:
    """`work()` now and every `interval` seconds, done by one of the processes sharing the
    metadata store per interval: the one that takes `lock`, which it lets expire. (While
    the store fails, every process takes a lock of its own, and does the work.)"""
    while True:
        if await locks.try_lock(lock, interval) is not None:
            await work()
        await asyncio.sleep(interval)


async def _measure_cache(store: ContentStore) -> None:
    try:
        usage = await asyncio.to_thread(store.measure)
    except OSError as exc:
        log.warning("measuring the cache failed: %s", exc)
    else:
        log.debug("cache holds %s", usage)
