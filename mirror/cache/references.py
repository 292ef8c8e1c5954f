"""What a manifest refers to: the digests that must be cached for it to be pulled.

An image manifest names its config and layers; an index (manifest list) names one manifest
per platform. Garbage collection, eviction and every walk of the manifest graph
(`mirror.cache.graph`) read them here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from mirror.errors import RegistryError
from mirror.manifestjson import ManifestError, parse_manifest
from mirror.reference import Digest
from mirror.storage import ContentStore

log = logging.getLogger(__name__)

# Unparseable manifests already warned about (each once per process, however many walks
# meet it); bounded, as anything filled from content is.
_WARNED_AT_MOST = 1000
_warned: set[Digest] = set()


class Child(NamedTuple):
    """An index's child: its digest, its platform as "os/arch[/variant]" and its media
    type, each as far as the index says."""

    digest: Digest
    platform: str | None
    media_type: str | None


@dataclass(frozen=True)
class References:
    """A manifest's direct references: `blobs` (config and layers) and `manifests` (an
    index's children)."""

    blobs: tuple[Digest, ...]
    manifests: tuple[Child, ...]
    unparseable: bool = False  # the bytes are no manifest: they name nothing


def references(data: bytes, digest: Digest | None = None) -> References:
    """Parse manifest bytes. Anything unparseable (a stored object from before the mirror
    refused such manifests, or a corrupt file) refers to nothing: every walk skips it,
    with one warning naming `digest`. Descriptors with digests the mirror cannot verify
    are skipped."""
    try:
        document = parse_manifest(data)
    except ManifestError as exc:
        _warn_unparseable(digest, exc)
        return References((), (), unparseable=True)
    blobs: list[Digest] = []
    for descriptor in [document.get("config"), *_list(document.get("layers"))]:
        if (digest := _digest(descriptor)) is not None:
            blobs.append(digest)
    manifests: list[Child] = []
    for descriptor in _list(document.get("manifests")):
        if (digest := _digest(descriptor)) is not None:
            media_type = descriptor.get("mediaType")
            manifests.append(
                Child(
                    digest,
                    _platform(descriptor),
                    media_type if isinstance(media_type, str) else None,
                )
            )
    return References(tuple(blobs), tuple(manifests))


async def named_blobs(store: ContentStore, manifests: Iterable[Digest]) -> set[Digest]:
    """The blobs the given cached manifests refer to directly. Other tasks run between two
    manifests: eviction reads every manifest of the store, and a read from memory or a
    local file, then a parse, would otherwise hold the event loop for all of them."""
    named: set[Digest] = set()
    for digest in manifests:
        if (manifest := await store.read_manifest(digest)) is not None:
            named.update(references(manifest.data, digest).blobs)
        await asyncio.sleep(0)
    return named


def _warn_unparseable(digest: Digest | None, exc: ManifestError) -> None:
    if digest is not None and digest in _warned:
        return
    if len(_warned) >= _WARNED_AT_MOST:
        _warned.clear()
    if digest is not None:
        _warned.add(digest)
    log.warning("manifest %s cannot be parsed (%s): skipped", digest or "(unnamed)", exc)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _digest(descriptor: Any) -> Digest | None:
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        return None
    try:
        return Digest.parse(descriptor["digest"])
    except RegistryError:
        return None


def _platform(descriptor: dict[str, Any]) -> str | None:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    text = "/".join(str(part) for part in parts if part)
    return text or None
