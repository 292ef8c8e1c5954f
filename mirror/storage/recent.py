"""Manifests read lately, kept in memory up to a byte budget: they are immutable, small (a
few KB) and the same few are read over and over, so every store keeps some at hand."""

from __future__ import annotations

from collections import OrderedDict

from mirror.reference import Digest
from mirror.storage.protocol import StoredManifest

RECENT_MANIFEST_BYTES = 32 * 1024 * 1024


class RecentManifests:
    """A least-recently-used memory of manifests, bounded by their bytes."""

    def __init__(self, budget: int = RECENT_MANIFEST_BYTES) -> None:
        self._budget = budget
        self._manifests: OrderedDict[Digest, StoredManifest] = OrderedDict()
        self._bytes = 0

    def get(self, digest: Digest) -> StoredManifest | None:
        if (manifest := self._manifests.get(digest)) is not None:
            self._manifests.move_to_end(digest)
        return manifest

    def keep(self, manifest: StoredManifest) -> None:
        if manifest.digest in self._manifests:
            return
        self._manifests[manifest.digest] = manifest
        self._bytes += len(manifest.data)
        while self._bytes > self._budget:
            _, dropped = self._manifests.popitem(last=False)
            self._bytes -= len(dropped.data)

    def forget(self, digest: Digest) -> None:
        if (dropped := self._manifests.pop(digest, None)) is not None:
            self._bytes -= len(dropped.data)
