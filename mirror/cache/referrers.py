"""Referrers (OCI 1.1): the manifests that name a subject manifest as their `subject`
(signatures, SBOMs, attestations), listed as an image index's descriptors.

A hosted repository lists the records its manifest pushes wrote. A cached repository lists
what its upstream lists: from the upstream's referrers API when it has one (a 200 of the
exact index type, its `Link` pages followed and merged), each page kept by the upstream
client's list cache (fresh for `tags_list_ttl`, served stale when the upstream fails);
otherwise from the fallback tag the spec defines (`sha256-<hex>`), resolved as an ordinary
tag through the manifest cache, so it is kept, revalidated and served stale like any tag,
and its absence means no referrers. Never an empty list while the upstream keeps its
referrers only in that tag: clients would not look for it then, and the signatures would
vanish.

Whatever the upstream lists for a repository is linked to it (the referrers API lists only
that repository's manifests), so a client may then fetch each referrer by digest through
the mirror, pulled and cached like any manifest.

Filtering by `artifactType` and paging are the mirror's own, over the whole list in digest
order, whichever way it was built.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mirror import errors, mediatypes
from mirror.cache.hosted import HostedRepositories
from mirror.cache.manifests import ManifestCache
from mirror.cache.scope import RepositoryScope
from mirror.cache.tags import next_query
from mirror.errors import RegistryError
from mirror.manifestjson import ManifestError, parse_manifest
from mirror.reference import Digest
from mirror.upstream.client import UpstreamError
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

# Pages of an upstream's referrers API followed at most.
MAX_REFERRER_PAGES = 100
# A page the mirror answers is at most this big (what clients accept of a manifest).
MAX_PAGE_BYTES = 4 * 1024 * 1024
# The fallback tag's parts, as the spec cuts them ("Referrers Tag Schema").
_MAX_ALGORITHM = 32
_MAX_ENCODED = 64

Descriptor = dict[str, Any]


@dataclass(frozen=True)
class Listed:
    """Every referrer of a subject, in digest order, and why the list is stale (None:
    fresh)."""

    descriptors: list[Descriptor]
    stale: str | None = None


@dataclass(frozen=True)
class Page:
    """Some of a list, and whether more follow it (never after an empty page: `n=0`
    would link to itself)."""

    descriptors: list[Descriptor]
    more: bool

    def index(self) -> bytes:
        """The page as the referrers API answers it: an OCI image index."""
        document = {
            "schemaVersion": 2,
            "mediaType": mediatypes.OCI_INDEX,
            "manifests": self.descriptors,
        }
        return json.dumps(document).encode()


class Referrers:
    """The referrers of subjects, in hosted and cached repositories."""

    def __init__(
        self, hosted: HostedRepositories, manifests: ManifestCache, scope: RepositoryScope
    ) -> None:
        self._hosted = hosted
        self._manifests = manifests
        self._scope = scope

    async def of(self, repo: UpstreamRepo | HostedRepo, subject: Digest) -> Listed:
        """The referrers of `subject` in `repo` (none, for a subject unknown there)."""
        if isinstance(repo, HostedRepo):
            records = await self._hosted.referrers(repo, subject)
            return Listed(_sorted([json.loads(record) for record in records]))
        listed = await self._upstream_api(repo, subject)
        if listed is None:
            listed = await self._fallback_tag(repo, subject)
        await self._scope.link(repo, [Digest.parse(d["digest"]) for d in listed.descriptors])
        return listed

    async def _upstream_api(self, repo: UpstreamRepo, subject: Digest) -> Listed | None:
        """Every page of the upstream's referrers API, merged; None when it has none."""
        found: dict[str, Descriptor] = {}
        query: list[tuple[str, str]] = []
        stale = None
        for _ in range(MAX_REFERRER_PAGES):
            got = await repo.upstream.get_referrers(
                repo.name, subject, query, credential=repo.credential
            )
            if got.status != 200 or got.media_type != mediatypes.OCI_INDEX:
                if query:  # a later page of an API the first page showed
                    raise _bad(repo, "a referrers page that is no image index")
                return None
            for descriptor in _entries(repo, got.body):
                found[descriptor["digest"]] = descriptor
            stale = stale or got.stale
            query = next_query(got.link)
            if not query:
                return Listed(_sorted(found.values()), stale)
        raise _bad(repo, f"more than {MAX_REFERRER_PAGES} pages of referrers")

    async def _fallback_tag(self, repo: UpstreamRepo, subject: Digest) -> Listed:
        """The index the upstream keeps under the subject's fallback tag, as a tag."""
        tag = fallback_tag(subject)
        try:
            resolved = await self._manifests.resolve(
                repo, tag, frozenset({mediatypes.OCI_INDEX}), with_bytes=True, count_pull=False
            )
        except RegistryError as exc:
            if exc.status == 404:  # no such tag: no referrers
                return Listed([])
            raise
        manifest = resolved.manifest
        if manifest is None or manifest.media_type != mediatypes.OCI_INDEX:
            log.warning("%s:%s is no image index: no referrers listed", repo.qualified, tag)
            return Listed([], resolved.stale)
        return Listed(_sorted(_entries(repo, manifest.data)), resolved.stale)


def fallback_tag(subject: Digest) -> str:
    """The tag a registry without the referrers API keeps `subject`'s referrers under:
    `<algorithm>-<encoded>`, each cut to the spec's length (digests' characters are all
    valid in a tag)."""
    return f"{subject.algorithm[:_MAX_ALGORITHM]}-{subject.hex[:_MAX_ENCODED]}"


def filtered(listed: Sequence[Descriptor], artifact_types: Collection[str]) -> list[Descriptor]:
    """The descriptors of any of `artifact_types` (all of them, when none is given)."""
    if not artifact_types:
        return list(listed)
    return [d for d in listed if d.get("artifactType") in artifact_types]


def page(listed: Sequence[Descriptor], *, n: int | None, last: Digest | None) -> Page:
    """The descriptors after `last` (in digest order), at most `n` of them and at most
    `MAX_PAGE_BYTES` of index; at least one when any is left and `n` is not 0."""
    after = [d for d in listed if last is None or d["digest"] > str(last)]
    taken: list[Descriptor] = []
    size = len(Page([], more=False).index())
    for descriptor in after:
        size += len(json.dumps(descriptor)) + 2
        if (n is not None and len(taken) >= n) or (taken and size > MAX_PAGE_BYTES):
            break
        taken.append(descriptor)
    return Page(taken, more=bool(taken) and len(taken) < len(after))


def _entries(repo: UpstreamRepo, body: bytes) -> list[Descriptor]:
    """The descriptors of an upstream's index; 502 for what is none."""
    try:
        document = parse_manifest(body)
    except ManifestError as exc:
        raise _bad(repo, f"a referrers index that is {exc}") from None
    entries = document.get("manifests") or []  # some registries say null for none
    if not isinstance(entries, list) or not all(_descriptor(entry) for entry in entries):
        raise _bad(repo, "a referrers index with an entry that is no descriptor")
    return entries


def _descriptor(entry: Any) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("mediaType"), str):
        return False
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return False
    try:
        Digest.parse(str(entry.get("digest")))
    except RegistryError:
        return False
    return True


def _sorted(descriptors: Collection[Descriptor]) -> list[Descriptor]:
    return sorted(descriptors, key=lambda d: str(d["digest"]))


def _bad(repo: UpstreamRepo, what: str) -> UpstreamError:
    return UpstreamError(
        errors.UPSTREAM_BAD_GATEWAY, f"upstream {repo.upstream.name} sent {what} ({repo.name})"
    )
