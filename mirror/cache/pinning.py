"""Pinned images: what the configured `prefetch` list keeps in the cache for good.

An image named in `prefetch` is pinned: eviction never removes its manifests or blobs. What
it pins is read from the cache itself: the digests its tag records name (under every Accept
class), and recursively what those manifests refer to, an index's children limited to
`prefetch_platforms` when that is set.

Platforms are selected as `mirror.platforms` says, as prefetch and export select them.

Nothing heavy is imported here: the data-dir commands use it too.
"""

from __future__ import annotations

import logging

from mirror.cache.graph import reachable
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.meta.store import TagRecords
from mirror.platforms import selector
from mirror.reference import Digest, ImageRef, parse_image
from mirror.storage import ContentStore

log = logging.getLogger(__name__)


def repository_name(config: Config, image: ImageRef) -> str:
    """The repository as its upstream knows it (and as tag records name it): upstreams with
    `library_prefix` hold one-segment names under `library/`, as the router does."""
    upstream = config.registries.upstream(image.host)
    if upstream is not None and upstream.library_prefix and "/" not in image.name:
        return f"library/{image.name}"
    return image.name


def pinned_images(config: Config) -> list[ImageRef]:
    """The configured `prefetch` images; a reference that does not parse is logged and
    skipped (`mirror prefetch` reports it)."""
    images = []
    for text in config.prefetch.prefetch:
        try:
            images.append(parse_image(text))
        except RegistryError as exc:
            log.warning("prefetch: %r is not an image reference: %s", text, exc)
    return images


async def pinned_digests(config: Config, store: ContentStore, meta: TagRecords) -> set[Digest]:
    """Every manifest and blob digest the configured `prefetch` images reach in the cache:
    what eviction must leave alone. Content not in the store is still named (a child whose
    manifest is missing is pinned, though nothing below it can be known)."""
    wanted: set[tuple[str, str, str]] = set()
    roots: set[Digest] = set()
    for image in pinned_images(config):
        if image.digest is not None:
            roots.add(image.digest)
        elif image.tag is not None:
            wanted.add((image.host, repository_name(config, image), image.tag))
    if wanted:
        for key, record in await meta.list_tags():
            if (key.upstream, key.repo, key.tag) in wanted:
                roots.add(record.digest)
    return await reachable(store, roots, selector(config.prefetch.prefetch_platforms))
