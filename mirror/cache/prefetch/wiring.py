"""The cache machinery a prefetch goes through: a server's own parts, or the same parts
built for a command working on the data dir."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from mirror.cache.access import AccessRecorder
from mirror.cache.blobs import BlobCache
from mirror.cache.manifests import ManifestCache
from mirror.cache.prefetch.engine import Puller
from mirror.cache.store import FilesystemStore
from mirror.config import Config
from mirror.meta.store import MetaStore
from mirror.upstream.routing import Router


def server_puller(
    config: Config,
    store: FilesystemStore,
    meta: MetaStore,
    router: Router,
    blobs: BlobCache,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[Puller, AccessRecorder]:
    """A puller on existing components (a server's), with its own manifest cache and an
    access recorder the caller flushes."""
    access = AccessRecorder(meta, clock=clock)
    manifests = ManifestCache(store, meta, access, config, clock=clock)
    return Puller(router, store, manifests, blobs), access


@contextlib.asynccontextmanager
async def open_puller(config: Config) -> AsyncIterator[Puller]:
    """What a server builds to pull through its cache, without the HTTP side: for a
    command working on the data dir. Temp files are left alone (a server may be writing
    them); everything is closed on the way out, downloads still running aborted.

    Raises MetaStoreError when a configured Redis cannot be reached.
    """
    from mirror.meta import open_meta_store  # (mirror.meta imports the metrics)

    store = FilesystemStore(config.data_dir)
    meta = await open_meta_store(
        redis_url=config.redis_url, key_prefix=config.redis_key_prefix, data_dir=config.data_dir
    )
    router = Router.from_config(config)
    access = AccessRecorder(meta)
    blobs = BlobCache(store, access, offline=config.offline)
    manifests = ManifestCache(store, meta, access, config)
    try:
        yield Puller(router, store, manifests, blobs)
    finally:
        await blobs.close()
        try:
            await access.close()
        finally:
            await router.close()
            await meta.close()
