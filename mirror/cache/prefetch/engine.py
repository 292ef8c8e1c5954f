"""Prefetching one image: its manifests through the manifest cache (tags always asked
upstream), then its blobs through the blob cache, a few at a time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mirror import errors, mediatypes
from mirror.cache.blobs import BlobCache
from mirror.cache.download import Reader
from mirror.cache.graph import ManifestWalk
from mirror.cache.manifests import ManifestCache
from mirror.cache.references import references
from mirror.errors import RegistryError
from mirror.meta.store import MetaStoreError
from mirror.platforms import platform_matches, selector
from mirror.reference import Digest, ImageRef, parse_image
from mirror.storage import ContentStore, StoredManifest
from mirror.upstream.routing import Router, UpstreamRepo

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


@dataclass(frozen=True)
class Puller:
    """The cache machinery a prefetch goes through."""

    router: Router
    store: ContentStore
    manifests: ManifestCache
    blobs: BlobCache


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
            repo,
            image.tag,
            frozenset(mediatypes.MANIFEST_TYPES),
            with_bytes=True,
            revalidate=True,
            count_pull=False,
        )
        assert resolved.manifest is not None
        root, stale = resolved.manifest, resolved.stale
    result.digest = root.digest
    images = await _image_manifests(puller, repo, root, platforms, result)
    blobs: dict[Digest, None] = {}
    for manifest, _ in images:
        blobs.update(dict.fromkeys(references(manifest.data, manifest.digest).blobs))
    limit = asyncio.Semaphore(PARALLEL_BLOBS)

    async def pull(digest: Digest) -> None:
        async with limit:
            await _blob(puller, image, repo, digest, progress, result)

    outcomes = await asyncio.gather(*(pull(d) for d in blobs), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    result.platforms = [
        platform or await _config_platform(puller.store, manifest) for manifest, platform in images
    ]
    if stale is not None:
        raise PrefetchError(f"tag not refreshed, the cached {root.digest} is kept: {stale}")


async def _image_manifests(
    puller: Puller,
    repo: UpstreamRepo,
    root: StoredManifest,
    platforms: Sequence[str],
    result: ImageResult,
) -> list[tuple[StoredManifest, str]]:
    """The image manifests to pull, each with its platform as its index gives it: the root
    itself (platform ""), or the children of an index `platforms` selects, fetched when the
    cache lacks them."""
    images: list[tuple[StoredManifest, str]] = []
    offered: list[str | None] = []  # every child platform the indexes name
    walk = ManifestWalk([root.digest], selector(platforms))
    for edge in walk:
        if edge.parent is None:
            manifest = root
        else:
            manifest = await puller.manifests.by_digest(repo, edge.digest)
        refs = walk.visit(edge, manifest.data)
        offered.extend(child.platform for child in refs.manifests)
        if not refs.manifests:
            label = "" if edge.parent is None else edge.platform or "unknown"
            images.append((manifest, label))
    if platforms and offered:
        result.missing_platforms = [
            wanted
            for wanted in platforms
            if not any(platform_matches([wanted], o) for o in offered)
        ]
        if not images:
            named = sorted({o or "unknown" for o in offered})
            raise PrefetchError(
                f"no {' or '.join(platforms)} in the index; it has {', '.join(named)}"
            )
    return images


async def _blob(
    puller: Puller,
    image: ImageRef,
    repo: UpstreamRepo,
    digest: Digest,
    progress: ProgressFactory,
    result: ImageResult,
) -> None:
    cached = await puller.blobs.cached(repo, digest)
    if cached is not None:
        result.blobs_cached += 1
        result.bytes_cached += cached.size
        return
    download = await puller.blobs.download(repo, digest)
    if not isinstance(download, Reader):  # streamed uncached: the disk is nearly full
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


async def _config_platform(store: ContentStore, manifest: StoredManifest) -> str:
    """The platform an image's config blob describes ("" when it cannot be told)."""
    refs = references(manifest.data, manifest.digest)
    if not refs.blobs:
        return ""
    config = refs.blobs[0]
    blob = await store.open_blob(config)
    if blob is None or blob.size > _CONFIG_READ_LIMIT:
        return ""
    try:
        async with contextlib.aclosing(blob.chunks()) as chunks:
            document = json.loads(b"".join([chunk async for chunk in chunks]))
    except (OSError, ValueError, RecursionError):  # a config blob is upstream input too
        return ""
    if not isinstance(document, dict):
        return ""
    parts = [document.get(key) for key in ("os", "architecture", "variant")]
    return "/".join(str(part) for part in parts if isinstance(part, str) and part)
