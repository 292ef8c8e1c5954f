"""Manifests: immutable by digest, resolved by tag.

A manifest addressed by digest is answered from the store whenever it is there and never
asks the upstream. A tag is resolved with an upstream HEAD, which Docker Hub does not count
against its pull limit; a GET follows only for a digest the mirror does not hold yet. The
upstream is asked with the client's canonical Accept class, because the same tag names
different manifests for different Accept sets (an index vs one platform's manifest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mirror import errors, mediatypes
from mirror.cache.store import FilesystemStore, StoredManifest
from mirror.reference import Digest
from mirror.singleflight import SingleFlight
from mirror.upstream.client import FetchedManifest, UpstreamClient, UpstreamError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestRef:
    """What a HEAD needs to answer: digest, media type and size, without the bytes."""

    digest: Digest
    media_type: str
    size: int


class ManifestCache:
    """The manifest side of the pull-through cache."""

    def __init__(self, store: FilesystemStore, upstream: UpstreamClient) -> None:
        self._store = store
        self._upstream = upstream
        self._fetches: SingleFlight[Digest, StoredManifest] = SingleFlight()

    async def by_digest(self, repo: str, digest: Digest) -> StoredManifest:
        """The manifest with this digest; fetched (once, however many ask) and verified if
        the store lacks it."""
        if stored := self._store.read_manifest(digest):
            return stored
        return await self._fetches.run(digest, lambda: self._fetch_by_digest(repo, digest))

    async def resolve_tag(self, repo: str, tag: str, accept: frozenset[str]) -> ManifestRef:
        """Which manifest a tag names for this Accept class, preferably without a GET."""
        head = await self._upstream.head_manifest(repo, tag, mediatypes.accept_header(accept))
        if head is not None:
            return ManifestRef(head.digest, head.media_type, head.size)
        manifest = await self._fetch_by_tag(repo, tag, accept)
        return ManifestRef(manifest.digest, manifest.media_type, len(manifest.data))

    async def by_tag(self, repo: str, tag: str, accept: frozenset[str]) -> StoredManifest:
        """The manifest a tag names now: HEAD upstream, then the store or a GET by digest."""
        head = await self._upstream.head_manifest(repo, tag, mediatypes.accept_header(accept))
        if head is None:
            return await self._fetch_by_tag(repo, tag, accept)
        return await self.by_digest(repo, head.digest)

    async def _fetch_by_digest(self, repo: str, digest: Digest) -> StoredManifest:
        # Ask for every type: a digest names exactly one manifest, whatever the client accepts.
        accept = mediatypes.accept_header(frozenset(mediatypes.MANIFEST_TYPES))
        fetched = await self._upstream.get_manifest(
            repo, str(digest), accept, algorithm=digest.algorithm
        )
        if fetched.digest != digest:
            raise self._integrity_error(repo, digest, fetched)
        return await self._keep(fetched)

    async def _fetch_by_tag(self, repo: str, tag: str, accept: frozenset[str]) -> StoredManifest:
        fetched = await self._upstream.get_manifest(repo, tag, mediatypes.accept_header(accept))
        if fetched.claimed is not None and fetched.claimed != fetched.digest:
            raise self._integrity_error(repo, fetched.claimed, fetched)
        return await self._keep(fetched)

    async def _keep(self, fetched: FetchedManifest) -> StoredManifest:
        manifest = StoredManifest(fetched.data, fetched.media_type, fetched.digest)
        await self._store.write_manifest(manifest)
        return manifest

    def _integrity_error(self, repo: str, expected: Digest, got: FetchedManifest) -> UpstreamError:
        log.error(
            "upstream integrity error: manifest %s of %s from %s hashes to %s; discarded",
            expected,
            repo,
            self._upstream.name,
            got.digest,
        )
        return UpstreamError(
            errors.UPSTREAM_BAD_GATEWAY,
            f"upstream {self._upstream.name} sent a manifest that does not match {expected}",
        )
