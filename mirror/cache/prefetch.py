"""Prefetch: pulling images into the cache before anyone asks for them.

`prefetch_image` resolves an image (a tag or a digest) through the cache machinery, as a
client pull would, and downloads every manifest and blob of it: all platforms of an index,
or the chosen ones. Tags are always asked upstream (a HEAD, free on Docker Hub) whatever
their freshness, unless a rule makes them immutable: a prefetch wants what the tag names
now. Prefetches are not counted as pulls (the status page's most-pulled list is about
clients), but their accesses are recorded like any other.

It is safe beside a running server on the same data dir: a blob is downloaded by one
process at a time (the store's download claims), and tag revalidations and manifest fetches
are shared through the metadata store's locks.

`schedule` is the server's side: the configured `prefetch` list at start and then every
`prefetch_interval` seconds, by one process of several (a metadata-store lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from mirror import errors, mediatypes
from mirror.admin.format import human_size
from mirror.cache.access import AccessRecorder
from mirror.cache.blobs import BlobCache
from mirror.cache.downloads import Download
from mirror.cache.manifests import ManifestCache
from mirror.cache.pinning import parse_platform, platform_matches
from mirror.cache.references import references
from mirror.config import Config, TagRule
from mirror.errors import RegistryError
from mirror.meta import MetaStore, MetaStoreError, open_meta_store
from mirror.reference import Digest, ImageRef, parse_image
from mirror.storage import ContentStore, StoredManifest
from mirror.storage.filesystem import FilesystemStore
from mirror.upstream.routing import Router, UpstreamRepo

log = logging.getLogger(__name__)

# Blobs of one image downloaded at once (as docker pull does).
PARALLEL_BLOBS = 4
# A config blob larger than this is not read for the platform it describes.
_CONFIG_READ_LIMIT = 1024 * 1024


class BlobProgress(Protocol):
    """Progress of one blob download (a progress bar, or nothing)."""

    def advance(self, size: int) -> None: ...

    def close(self) -> None: ...


# Called when a blob download starts: (image, digest, size if known) -> its progress.
ProgressFactory = Callable[[ImageRef, Digest, int | None], BlobProgress]


class _NoProgress:
    def advance(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(image: ImageRef, digest: Digest, size: int | None) -> BlobProgress:
    return _NoProgress()


@dataclass
class ImageResult:
    """What prefetching one image did."""

    image: str  # as given
    digest: Digest | None = None  # what the reference names now
    platforms: list[str] = field(default_factory=list)  # pulled ("" for a single image)
    missing_platforms: list[str] = field(default_factory=list)  # wanted, not in the index
    blobs_fetched: int = 0
    blobs_cached: int = 0
    bytes_fetched: int = 0
    bytes_cached: int = 0
    error: str | None = None  # why it failed (nothing else is then certain)

    @property
    def ok(self) -> bool:
        return self.error is None


class PrefetchError(Exception):
    """An image could not be prefetched as asked (the message says why)."""


class _NoPullsRecorder(AccessRecorder):
    """Records accesses but counts no pulls: a prefetch is not a client pulling."""

    def pulled(self, repo: UpstreamRepo) -> None:
        pass


def revalidating(config: Config) -> Config:
    """`config` with every tag stale at once (immutable rules kept): what makes a prefetch
    ask the upstream about each tag however recently it was confirmed."""

    def stale(rules: tuple[TagRule, ...]) -> tuple[TagRule, ...]:
        return tuple(rule if rule.immutable else replace(rule, ttl=0.0) for rule in rules)

    return replace(
        config,
        tag_ttl=0.0,
        tag_rules=stale(config.tag_rules),
        tag_cache_seconds=0.0,
        upstreams=tuple(
            replace(u, tag_ttl=None, tag_rules=stale(u.tag_rules)) for u in config.upstreams
        ),
    )


@dataclass(frozen=True)
class Puller:
    """The cache machinery a prefetch goes through."""

    router: Router
    store: ContentStore
    manifests: ManifestCache
    blobs: BlobCache


def server_puller(
    config: Config,
    store: ContentStore,
    meta: MetaStore,
    router: Router,
    blobs: BlobCache,
    *,
    clock: Callable[[], float] = time.time,
) -> tuple[Puller, AccessRecorder]:
    """A puller on existing components (a server's), with its own manifest cache that
    always revalidates tags and an access recorder the caller flushes."""
    access = _NoPullsRecorder(meta, clock=clock)
    manifests = ManifestCache(store, meta, access, revalidating(config), clock=clock)
    return Puller(router, store, manifests, blobs), access


@contextlib.asynccontextmanager
async def open_puller(config: Config) -> AsyncIterator[Puller]:
    """What a server builds to pull through its cache, without the HTTP side: for a
    command working on the data dir. Temp files are left alone (a server may be writing
    them); everything is closed on the way out, downloads still running aborted.

    Raises MetaStoreError when a configured Redis cannot be reached.
    """
    store = FilesystemStore(config.data_dir)
    meta = await open_meta_store(
        redis_url=config.redis_url, key_prefix=config.redis_key_prefix, data_dir=config.data_dir
    )
    router = Router.from_config(config)
    access = _NoPullsRecorder(meta)
    blobs = BlobCache(store, access, offline=config.offline)
    manifests = ManifestCache(store, meta, access, revalidating(config))
    try:
        yield Puller(router, store, manifests, blobs)
    finally:
        await blobs.close()
        try:
            await access.close()
        finally:
            await router.close()
            await meta.close()


def describe(exc: BaseException) -> str:
    """An error as a prefetch reports it."""
    if isinstance(exc, RegistryError) and exc.error in (errors.MANIFEST_UNKNOWN, errors.NOT_FOUND):
        return f"no such image or tag ({exc})"
    if isinstance(exc, PrefetchError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot write the cache: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


async def prefetch_image(
    puller: Puller,
    text: str,
    platforms: Sequence[str] = (),
    *,
    progress: ProgressFactory = no_progress,
) -> ImageResult:
    """Pull the image `text` names into the cache: for an index, the children for
    `platforms` (empty: all). Failures are reported in the result, never raised."""
    result = ImageResult(text)
    try:
        image = parse_image(text)
        repo = puller.router.repository(image.name, image.host)
        await _prefetch(puller, image, repo, platforms, progress, result)
    except (PrefetchError, RegistryError, MetaStoreError, OSError) as exc:
        result.error = describe(exc)
    return result


async def _prefetch(
    puller: Puller,
    image: ImageRef,
    repo: UpstreamRepo,
    platforms: Sequence[str],
    progress: ProgressFactory,
    result: ImageResult,
) -> None:
    stale: str | None = None
    if image.digest is not None:
        root = await puller.manifests.by_digest(repo, image.digest)
    else:
        assert image.tag is not None
        # Every manifest type accepted: an index comes as the index, for all its platforms.
        resolved = await puller.manifests.resolve(
            repo, image.tag, frozenset(mediatypes.MANIFEST_TYPES), with_bytes=True
        )
        assert resolved.manifest is not None
        root, stale = resolved.manifest, resolved.stale
    result.digest = root.digest

    # The image manifests to pull: the root itself, or the chosen children of an index.
    images: list[tuple[StoredManifest, str]] = []
    pending: list[tuple[StoredManifest, str]] = [(root, "")]
    offered: list[str] = []
    while pending:
        manifest, platform = pending.pop(0)
        refs = references(manifest.data)
        if not refs.manifests:
            images.append((manifest, platform))
            continue
        for child, child_platform in refs.manifests:
            offered.append(child_platform or "unknown")
            if platform_matches(platforms, child_platform):
                stored = await puller.manifests.by_digest(repo, child)
                pending.append((stored, child_platform or "unknown"))
    if platforms and offered:
        result.missing_platforms = [
            wanted
            for wanted in platforms
            if not any(platform_matches([wanted], o) for o in offered)
        ]
        if not images:
            raise PrefetchError(
                f"no {' or '.join(platforms)} in the index; "
                f"it has {', '.join(sorted(set(offered)))}"
            )

    blobs: dict[Digest, None] = {}
    for manifest, _ in images:
        blobs.update(dict.fromkeys(references(manifest.data).blobs))
    limit = asyncio.Semaphore(PARALLEL_BLOBS)

    async def pull(digest: Digest) -> None:
        async with limit:
            await _blob(puller, image, repo, digest, progress, result)

    outcomes = await asyncio.gather(*(pull(d) for d in blobs), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    result.platforms = [
        platform or _config_platform(puller.store, manifest) for manifest, platform in images
    ]
    if stale is not None:
        raise PrefetchError(f"tag not refreshed, the cached {root.digest} is kept: {stale}")


async def _blob(
    puller: Puller,
    image: ImageRef,
    repo: UpstreamRepo,
    digest: Digest,
    progress: ProgressFactory,
    result: ImageResult,
) -> None:
    cached = puller.blobs.cached(repo, digest)
    if cached is not None:
        result.blobs_cached += 1
        result.bytes_cached += cached.size
        return
    download = await puller.blobs.download(repo, digest)
    if not isinstance(download, Download):  # streamed uncached: the disk is nearly full
        await download.release()
        raise PrefetchError(f"{digest} not cached: the data dir is below min_free_space")
    bar = progress(image, digest, download.size)
    read = 0
    try:
        async with contextlib.aclosing(download.read()) as chunks:
            async for chunk in chunks:
                read += len(chunk)
                bar.advance(len(chunk))
    finally:
        bar.close()
    result.blobs_fetched += 1
    result.bytes_fetched += read


def _config_platform(store: ContentStore, manifest: StoredManifest) -> str:
    """The platform an image's config blob describes ("" when it cannot be told)."""
    refs = references(manifest.data)
    if not refs.blobs:
        return ""
    config = refs.blobs[0]
    blob = store.open_blob(config)
    if blob is None or blob.size > _CONFIG_READ_LIMIT:
        return ""
    try:
        with blob.open() as fh:
            document = json.loads(fh.read())
    except (OSError, ValueError):
        return ""
    if not isinstance(document, dict):
        return ""
    parts = [document.get(key) for key in ("os", "architecture", "variant")]
    return "/".join(str(part) for part in parts if isinstance(part, str) and part)


# --- the server's schedule ----------------------------------------------------------------


def schedule_lock(config: Config) -> str:
    """The lock one process of several takes to prefetch in an interval. It names the list,
    so a changed list is prefetched at once on restart rather than an interval later."""
    wanted = json.dumps([config.prefetch, config.prefetch_platforms])
    return "prefetch:" + hashlib.sha256(wanted.encode()).hexdigest()[:16]


async def schedule(
    config: Config,
    store: ContentStore,
    meta: MetaStore,
    router: Router,
    blobs: BlobCache,
    *,
    clock: Callable[[], float] = time.time,
) -> None:
    """Prefetch the configured list now and every `prefetch_interval` seconds, until
    cancelled. Of several processes sharing the metadata store, one does it per interval:
    it takes a lock that expires after the interval and does not release it."""
    if not config.prefetch:
        return
    if config.offline:
        log.info("prefetch: not scheduled, the mirror is offline")
        return
    try:
        platforms = [parse_platform(p) for p in config.prefetch_platforms]
    except ValueError as exc:
        log.error("prefetch: not scheduled: prefetch_platforms: %s", exc)
        return
    pulls, access = server_puller(config, store, meta, router, blobs, clock=clock)
    lock = schedule_lock(config)
    while True:
        try:
            if await meta.try_lock(lock, ttl=config.prefetch_interval) is not None:
                await prefetch_all(pulls, config.prefetch, platforms)
                await access.flush()
        except Exception:  # the schedule must survive anything one round does
            log.exception("prefetch: the scheduled round failed")
        await asyncio.sleep(config.prefetch_interval)


async def prefetch_all(puller: Puller, images: Sequence[str], platforms: Sequence[str]) -> None:
    """One scheduled round: each image in turn, each outcome logged."""
    for text in images:
        result = await prefetch_image(puller, text, platforms)
        if result.ok:
            log.info("prefetch: %s", summary_line(result))
        else:
            log.warning("prefetch of %s failed: %s", text, result.error)


def summary_line(result: ImageResult) -> str:
    """One image's outcome in a line (without its name's failure, see `error`)."""
    digest = str(result.digest)[:19] if result.digest is not None else "-"
    platforms = ", ".join(p or "single platform" for p in result.platforms) or "-"
    line = (
        f"{result.image} {digest} [{platforms}]: "
        f"{result.blobs_fetched} blobs fetched ({human_size(result.bytes_fetched)}), "
        f"{result.blobs_cached} already cached ({human_size(result.bytes_cached)})"
    )
    if result.missing_platforms:
        line += f"; not in the index: {', '.join(result.missing_platforms)}"
    return line
