"""What a manifest refers to: the digests that must be cached for it to be pulled.

An image manifest names its config and layers; an index (manifest list) names one manifest
per platform. Garbage collection, eviction, pinning, export and `mirror ls` all walk these
references, so they are read in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage import ContentStore


@dataclass(frozen=True)
class References:
    """A manifest's direct references: `blobs` (config and layers) and `manifests` (an
    index's children, with their platform as "os/arch[/variant]" when it says)."""

    blobs: tuple[Digest, ...]
    manifests: tuple[tuple[Digest, str | None], ...]


def references(data: bytes) -> References:
    """Parse manifest bytes. Anything unreadable refers to nothing (it stays cached as
    is); descriptors with digests the mirror cannot verify are skipped."""
    try:
        document: Any = json.loads(data)
    except ValueError:
        return References((), ())
    if not isinstance(document, dict):
        return References((), ())
    blobs: list[Digest] = []
    for descriptor in [document.get("config"), *_list(document.get("layers"))]:
        if (digest := _digest(descriptor)) is not None:
            blobs.append(digest)
    manifests: list[tuple[Digest, str | None]] = []
    for descriptor in _list(document.get("manifests")):
        if (digest := _digest(descriptor)) is not None:
            manifests.append((digest, _platform(descriptor)))
    return References(tuple(blobs), tuple(manifests))


def reachable(
    store: ContentStore,
    roots: Iterable[Digest],
    keep_child: Callable[[str | None], bool] = lambda platform: True,
) -> set[Digest]:
    """`roots` and everything their cached manifests refer to, recursively, whether cached
    or not; an index's children only where `keep_child(platform)` says so."""
    found: set[Digest] = set()
    pending = list(roots)
    while pending:
        digest = pending.pop()
        if digest in found:
            continue
        found.add(digest)
        manifest = store.read_manifest(digest)
        if manifest is None:
            continue
        refs = references(manifest.data)
        found.update(refs.blobs)
        pending.extend(child for child, platform in refs.manifests if keep_child(platform))
    return found


def named_blobs(store: ContentStore, manifests: Iterable[Digest]) -> set[Digest]:
    """The blobs the given cached manifests refer to directly (blocking: reads them)."""
    named: set[Digest] = set()
    for digest in manifests:
        if (manifest := store.read_manifest(digest)) is not None:
            named.update(references(manifest.data).blobs)
    return named


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
