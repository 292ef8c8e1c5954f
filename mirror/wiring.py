"""The composition root: the one place that builds the mirror's running parts from a `Config`.

Three kinds of process use it, and say how they differ through options rather than by
building their own parts:

- the server (`server.app.create_app`): the metadata store wrapped so that losing it never
  fails a request; leftover temp files removed when no sibling worker may be writing them;
- a command on the data dir (`mirror gc`, `ls`, `rm`, `export`, `import`, and the supervisor
  of workers preparing it for them): the content store and the bare metadata store, which
  fail loudly instead of answering "nothing known";
- a one-shot pull (`mirror prefetch`, `mirror tag`): the server's caches without the HTTP
  side, asking the upstream about every tag however recently it was confirmed.

Which content store and which metadata backend serve a config is decided here and nowhere
else, so a new backend is one more branch in `open_store` or `open_meta_store`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from mirror.cache.access import AccessRecorder
from mirror.cache.blobs import BlobCache
from mirror.cache.cluster import Cluster
from mirror.cache.downloads import AbandonBudget
from mirror.cache.hosted import HostedRepositories
from mirror.cache.janitor import Janitor
from mirror.cache.manifests import ManifestCache
from mirror.cache.prefetch.engine import Puller
from mirror.cache.referrers import Referrers
from mirror.cache.scope import RepositoryScope
from mirror.cache.tags import TagLists
from mirror.cache.uploads import UploadSessions
from mirror.config import Config
from mirror.config.cluster import read_cluster_secret
from mirror.meta import Leases, MetaStore, Replica, open_meta_store
from mirror.storage import BlobRedirects, ContentStore
from mirror.storage.filesystem import FilesystemStore
from mirror.storage.s3client import S3Location
from mirror.storage.s3store import S3Store
from mirror.upstream.lists import ListCache
from mirror.upstream.peers import Peers
from mirror.upstream.routing import Router

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataDir:
    """What a command on the data dir works with: the content and the records about it."""

    config: Config
    store: ContentStore
    meta: MetaStore

    def hosted(self) -> HostedRepositories:
        """The hosted repositories, for a command that records content into them as a push
        does (`mirror import`)."""
        limit = self.config.hosting.max_manifest_size
        return HostedRepositories(self.store, self.meta, self.meta, max_manifest_size=limit)


@dataclass(frozen=True)
class Mirror:
    """The pull-through parts: a data dir plus the upstreams and the caches in front."""

    config: Config
    store: ContentStore
    meta: MetaStore
    router: Router
    access: AccessRecorder
    blobs: BlobCache
    manifests: ManifestCache
    tags: TagLists
    lists: ListCache  # the upstreams' tag lists and referrers, kept beside the metadata
    replica: Replica  # this process among the replicas (its id, its advertise_url)
    cluster: Cluster | None  # None: a single host (file storage), nothing to share with
    # With S3 storage: the janitor of orphaned uploads, and the store itself when blob GETs
    # are redirected to it (`s3_redirect`).
    janitor: Janitor | None
    redirects: BlobRedirects | None
    # The hosted repositories and the uploads pushing into them.
    hosted: HostedRepositories
    uploads: UploadSessions
    referrers: Referrers  # of hosted and cached repositories alike

    def puller(self) -> Puller:
        """The parts a prefetch pulls through (the server's own, for its schedule)."""
        return Puller(self.router, self.store, self.manifests, self.blobs)

    async def close(self) -> None:
        """Abort downloads still running, write the last access records, then let go of the
        upstream sessions and the metadata store (each step even if one before failed)."""
        try:
            await self.blobs.close()
            await self.access.close()
        finally:
            if self.cluster is not None and self.cluster.peers is not None:
                await self.cluster.peers.close()
            await self.router.close()
            try:
                await self.lists.close()
                await self.meta.close()
            finally:
                await close_store(self.store)


def open_store(config: Config) -> ContentStore:
    """The content store `config` names: the data dir, or an S3 bucket (its client opened
    in the event loop that first uses it; `close_store` closes it)."""
    storage = config.storage
    if storage.storage == "file":
        return FilesystemStore(storage.data_dir)
    location = S3Location.from_settings(
        storage.storage, storage.s3_endpoint, storage.s3_region, storage.s3_path_style
    )
    return S3Store(location, storage.data_dir, storage.local_cache_size)


async def close_store(store: ContentStore) -> None:
    """Let go of what a store holds open (the S3 store's connections)."""
    if isinstance(store, S3Store):
        await store.close()


async def _open_meta(config: Config, *, resilient: bool, clock: Callable[[], float]) -> MetaStore:
    return await open_meta_store(
        redis_url=config.storage.redis_url,
        key_prefix=config.storage.redis_key_prefix,
        data_dir=config.storage.data_dir,
        resilient=resilient,
        clock=clock,
    )


@asynccontextmanager
async def open_data_dir(
    config: Config, *, store: ContentStore | None = None
) -> AsyncIterator[DataDir]:
    """The content store and the bare metadata store of `config`, for a command. Temp files
    are left alone: a server may be writing them. `store` is the content store when the
    command opened it already (`mirror import` verifies a bundle into it first); the caller
    then closes it, as it does whatever it opened.

    Raises MetaStoreError when the metadata store cannot be opened."""
    owned = store is None
    store = open_store(config) if store is None else store
    try:
        meta = await _open_meta(config, resilient=False, clock=time.time)
        try:
            yield DataDir(config, store, meta)
        finally:
            await meta.close()
    finally:
        if owned:
            await close_store(store)


async def build(
    config: Config,
    *,
    clock: Callable[[], float] = time.time,
    remove_temp_files: bool = False,
    replica: Replica | None = None,
) -> Mirror:
    """The pull-through parts for a server or a one-shot pull. Async because the upstream
    sessions and the metadata store must be opened in the event loop that uses them.
    `clock` (unix time) is what freshness and access times are measured with; tests pass
    their own. `replica` is the one this process belongs to (a worker, its supervisor's),
    else `this_replica(config)`.

    Raises MetaStoreError when a configured Redis cannot be reached."""
    store = open_store(config)
    if remove_temp_files and (removed := await asyncio.to_thread(store.remove_temp_files)):
        log.info("removed %d temp files left by an earlier run", removed)
    meta = await _open_meta(config, resilient=True, clock=clock)
    lists = ListCache.open(
        redis_url=config.storage.redis_url,
        key_prefix=config.storage.redis_key_prefix,
        data_dir=config.storage.data_dir,
        ttl=config.freshness.tags_list_ttl,
        offline=config.freshness.offline,
        clock=clock,
    )
    router = Router.from_config(config, lists)
    access = AccessRecorder(meta, clock=clock)
    abandon_budget = AbandonBudget(config.limits.abandoned_downloads, config.limits.abandoned_bytes)
    scope = RepositoryScope(meta, offline=config.freshness.offline)
    replica = this_replica(config) if replica is None else replica
    cluster = _cluster(config, store, meta, replica)
    blobs = BlobCache(
        store,
        access,
        abandon_budget,
        scope,
        offline=config.freshness.offline,
        min_free_space=config.cache.min_free_space,
        cluster=cluster,
    )
    manifests = ManifestCache(store, meta, access, scope, config, clock=clock)
    tags = TagLists()
    janitor, redirects = None, None
    if isinstance(store, S3Store):
        janitor = Janitor(store, meta, grace=config.storage.s3_orphan_grace)
        redirects = store if config.storage.s3_redirect else None
    hosting = config.hosting
    hosted = HostedRepositories(store, meta, meta, max_manifest_size=hosting.max_manifest_size)
    uploads = UploadSessions(store, meta, ttl=hosting.upload_ttl, clock=clock)
    referrers = Referrers(hosted, manifests, scope)
    return Mirror(
        config,
        store,
        meta,
        router,
        access,
        blobs,
        manifests,
        tags,
        lists,
        replica,
        cluster,
        janitor,
        redirects,
        hosted,
        uploads,
        referrers,
    )


def this_replica(config: Config) -> Replica:
    """This process as the cluster knows it: named by its advertise_url, else by host name
    and a random suffix. The workers of one `mirror serve` are one replica: their supervisor
    calls this once for all of them."""
    url = config.cluster.advertise_url
    if url is not None:
        return Replica(urlsplit(url).netloc, url)
    return Replica(f"{socket.gethostname()}-{secrets.token_hex(3)}", None)


def _cluster(
    config: Config, store: ContentStore, leases: Leases, replica: Replica
) -> Cluster | None:
    """Downloads coordinated between replicas when they share the store (a bucket; its
    Redis is required with it). The relay client needs the cluster secret."""
    if not isinstance(store, S3Store):
        return None
    settings = config.cluster
    secret = read_cluster_secret(settings.cluster_secret, settings.cluster_secret_file, {})
    peers = None if secret is None else Peers(secret, stall=settings.cluster_lease)
    return Cluster(leases, replica, peers, settings.cluster_lease)


@asynccontextmanager
async def one_shot(config: Config) -> AsyncIterator[Mirror]:
    """The pull-through parts for a one-shot command (`mirror prefetch`, `mirror tag`),
    closed on the way out (downloads still running aborted). Temp files are left alone: a
    server may be writing them.

    Raises MetaStoreError when a configured Redis cannot be reached."""
    mirror = await build(config)
    try:
        yield mirror
    finally:
        await mirror.close()


@asynccontextmanager
async def pulling(config: Config) -> AsyncIterator[Puller]:
    """`one_shot`'s parts a prefetch pulls through."""
    async with one_shot(config) as mirror:
        yield mirror.puller()
