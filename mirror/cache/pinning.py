"""Pinned images: what the configured `prefetch` list keeps in the cache for good.

An image named in `prefetch` is pinned: eviction never removes its manifests or blobs. What
it pins is read from the cache itself: the digests its tag records name (under every Accept
class), and recursively what those manifests refer to, an index's children limited to
`prefetch_platforms` when that is set.

Platforms are written "os/arch[/variant]" (`linux/amd64`, `linux/arm64/v8`). A wanted
platform without a variant matches every variant of its os/arch; `linux/arm64` and
`linux/arm64/v8` are the same platform (v8 is arm64's only variant in practice).

Nothing heavy is imported here: the data-dir commands use it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from mirror.cache.references import reachable
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.meta.store import TagRecords
from mirror.reference import Digest, ImageRef, parse_image
from mirror.storage import ContentStore

log = logging.getLogger(__name__)

_PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?")


def parse_platform(text: str) -> str:
    """A platform as "os/arch[/variant]", lower-cased; ValueError if it is not one."""
    platform = text.strip().lower()
    if not _PLATFORM_RE.fullmatch(platform):
        raise ValueError(f"{text!r} is not a platform such as linux/amd64 or linux/arm64/v8")
    return platform


def _normalise(platform: str) -> tuple[str, ...]:
    parts = tuple(platform.lower().split("/"))
    if parts[1:] == ("arm64", "v8"):
        return parts[:2]
    return parts


def platform_matches(wanted: Sequence[str], platform: str | None) -> bool:
    """Whether an index entry for `platform` is selected by `wanted` (empty: every entry)."""
    if not wanted:
        return True
    if platform is None:
        return False
    have = _normalise(platform)
    for item in wanted:
        want = _normalise(item)
        if have == want or (len(want) == 2 and have[:2] == want):
            return True
    return False


def repository_name(config: Config, image: ImageRef) -> str:
    """The repository as its upstream knows it (and as tag records name it): upstreams with
    `library_prefix` hold one-segment names under `library/`, as the router does."""
    upstream = config.upstream(image.host)
    if upstream is not None and upstream.library_prefix and "/" not in image.name:
        return f"library/{image.name}"
    return image.name


def pinned_images(config: Config) -> list[ImageRef]:
    """The configured `prefetch` images; a reference that does not parse is logged and
    skipped (`mirror prefetch` reports it)."""
    images = []
    for text in config.prefetch:
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
    platforms = config.prefetch_platforms
    return reachable(store, roots, lambda platform: platform_matches(platforms, platform))
