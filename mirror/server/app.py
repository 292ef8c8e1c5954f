"""Wiring: builds the aiohttp application from a `Config` and owns component lifetimes."""

from __future__ import annotations

import logging

from aiohttp import web

from mirror.cache.blobs import BlobCache
from mirror.cache.manifests import ManifestCache
from mirror.cache.store import FilesystemStore
from mirror.config import Config
from mirror.server.middleware import add_api_version, registry_errors
from mirror.server.routes import RegistryRoutes
from mirror.upstream.client import UpstreamClient

log = logging.getLogger(__name__)


async def create_app(config: Config) -> web.Application:
    """An application serving `config`. Async because the upstream session must be created
    inside the event loop that will use it."""
    store = FilesystemStore(config.data_dir)
    if removed := store.remove_temp_files():
        log.info("removed %d temp files left by an earlier run", removed)
    upstream = UpstreamClient(
        config.upstream,
        username=config.upstream_username,
        password=config.upstream_password,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
    )
    blobs = BlobCache(store, upstream)
    manifests = ManifestCache(store, upstream)

    app = web.Application(middlewares=[registry_errors])
    app.on_response_prepare.append(add_api_version)
    RegistryRoutes(config, blobs, manifests, upstream).register(app.router)

    async def abort_downloads(_: web.Application) -> None:
        # on_shutdown runs before the server waits for open requests, so streaming clients
        # are cut off at once instead of holding shutdown until their downloads finish.
        await blobs.close()

    async def close_upstream(_: web.Application) -> None:
        await upstream.close()

    app.on_shutdown.append(abort_downloads)
    app.on_cleanup.append(close_upstream)
    log.info("mirroring %s into %s", upstream.name, config.data_dir)
    return app
