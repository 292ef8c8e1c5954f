"""Wiring: builds the aiohttp application from a `Config` and owns component lifetimes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiohttp import web

from mirror.cache.access import AccessRecorder
from mirror.cache.blobs import BlobCache
from mirror.cache.eviction import Evictor
from mirror.cache.manifests import ManifestCache
from mirror.cache.pinning import pinned_digests
from mirror.cache.prefetch.schedule import schedule as schedule_prefetch
from mirror.cache.store import FilesystemStore
from mirror.cache.tags import TagListCache
from mirror.config import Config
from mirror.meta import open_meta_store
from mirror.server import auth
from mirror.server.middleware import add_response_headers, observe_requests, registry_errors
from mirror.server.ops import OpsRoutes
from mirror.server.routes import RegistryRoutes
from mirror.upstream.routing import Router

log = logging.getLogger(__name__)

# How often the cache's size is measured from disk (between, commits are counted as they
# happen; a measurement also picks up what other processes added or removed).
MEASURE_INTERVAL_SECONDS = 300.0


async def create_app(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    remove_temp_files: bool = True,
) -> web.Application:
    """An application serving `config`. Async because the upstream session and the metadata
    store must be opened inside the event loop that will use them. `clock` (unix time) is
    what freshness is measured with; tests pass their own. A worker of several does not
    remove temp files: its siblings may be writing them.

    Raises MetaStoreError when a configured Redis cannot be reached.
    """
    store = FilesystemStore(config.data_dir)
    if remove_temp_files and (removed := store.remove_temp_files()):
        log.info("removed %d temp files left by an earlier run", removed)
    meta = await open_meta_store(
        redis_url=config.redis_url, key_prefix=config.redis_key_prefix, data_dir=config.data_dir
    )
    router = Router.from_config(config)
    access = AccessRecorder(meta, clock=clock)
    blobs = BlobCache(store, access, offline=config.offline, min_free_space=config.min_free_space)
    manifests = ManifestCache(store, meta, access, config, clock=clock)
    tags = TagListCache(meta, config, clock=clock)

    app = web.Application(middlewares=[observe_requests, registry_errors])
    app.on_response_prepare.append(add_response_headers)
    RegistryRoutes(router, blobs, manifests, tags, meta).register(app.router)
    OpsRoutes(store, meta, router, access, clock=clock).register(app.router)
    auth.setup(app, config, router, clock=clock)  # client authentication, if configured
    background: set[asyncio.Task[None]] = set()
    prefetching: set[asyncio.Task[None]] = set()  # the `prefetch` schedule

    async def start(_: web.Application) -> None:
        access.start()
        background.add(asyncio.create_task(_measure_cache(store), name="measure-cache"))
        if config.max_cache_size > 0:
            evictor = Evictor(
                store,
                meta,
                max_bytes=config.max_cache_size,
                low_water=config.cache_low_water,
                pinned=lambda: pinned_digests(config, store, meta),
                before_pass=access.flush,
                clock=clock,
            )
            background.add(asyncio.create_task(evictor.run_forever(), name="evict"))
        if config.prefetch:
            prefetching.add(
                asyncio.create_task(
                    schedule_prefetch(config, store, meta, router, blobs, clock=clock),
                    name="prefetch",
                )
            )
            background.update(prefetching)

    async def abort_downloads(_: web.Application) -> None:
        # on_shutdown runs before the server waits for open requests, so streaming clients
        # are cut off at once instead of holding shutdown until their downloads finish.
        # The prefetch schedule stops first: it must not start downloads after this.
        for task in prefetching:
            task.cancel()
        await asyncio.gather(*prefetching, return_exceptions=True)
        await blobs.close()

    async def close(_: web.Application) -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await access.close()
        await router.close()
        await meta.close()

    app.on_startup.append(start)
    app.on_shutdown.append(abort_downloads)
    app.on_cleanup.append(close)
    served = ", ".join(f"{u.host} ({u.name})" for u in router.upstreams)
    mode = f"offline, cache only, for {served}" if config.offline else f"mirroring {served}"
    backend = "Redis" if config.redis_url else "embedded SQLite"
    log.info("%s into %s; metadata in %s", mode, config.data_dir, backend)
    return app


async def _measure_cache(store: FilesystemStore) -> None:
    while True:
        try:
            usage = await asyncio.to_thread(store.measure)
        except OSError as exc:
            log.warning("measuring the cache failed: %s", exc)
        else:
            log.debug("cache holds %s", usage)
        await asyncio.sleep(MEASURE_INTERVAL_SECONDS)
