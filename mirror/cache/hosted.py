"""Hosted repositories: content the mirror keeps for its own users, served from the store and
the metadata store alone, never from or against an upstream.

The bytes live in the same content store as the cache's, once per digest; what a hosted
repository holds is recorded per repository (`HostedContent`), so a digest is readable
through a hosted name only once it was pushed, mounted or put there, and eviction keeps
every digest a hosted repository holds. Manifests are kept byte for byte; a pushed manifest
must name only blobs and child manifests the repository already holds, so a hosted image is
always whole. Putting a manifest the repository holds under another tag copies nothing.

Deletes take content from one repository's records only; the bytes stay in the store
until `mirror gc` finds nothing holds them (another repository, the cache) and they are
past its grace period. What a client was just told a repository holds (a blob `HEAD`, a
manifest's check) is stamped, so gc leaves it for the push that relies on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from mirror import errors, mediatypes, observe
from mirror.errors import RegistryError
from mirror.manifestjson import ManifestError, declared_type, parse_manifest
from mirror.meta.store import HostedContent, HostedManifest, Link, Links, MetaStoreError
from mirror.reference import Digest, is_digest, parse_tag
from mirror.storage import ContentStore, StoredBlob, StoredManifest, StoreUnavailable
from mirror.upstream.hosting import HostedRepo
from mirror.upstream.routing import UpstreamRepo

log = logging.getLogger(__name__)

T = TypeVar("T")

_IMAGE_TYPES = frozenset({mediatypes.DOCKER_MANIFEST, mediatypes.OCI_MANIFEST})
_INDEX_TYPES = frozenset({mediatypes.DOCKER_MANIFEST_LIST, mediatypes.OCI_INDEX})
# A tag of the referrers tag schema (`<algorithm>-<encoded>`, as the spec cuts them).
_FALLBACK_TAG = re.compile(r"[a-z0-9]{1,32}-[a-f0-9]{32,64}")


@dataclass(frozen=True)
class PushedManifest:
    """A manifest put into a hosted repository: its digest, and its subject if it has one
    (the `OCI-Subject` answer)."""

    digest: Digest
    subject: Digest | None


class HostedRepositories:
    """Reads and writes of hosted repositories over the store and their records."""

    def __init__(
        self, store: ContentStore, meta: HostedContent, links: Links, *, max_manifest_size: int
    ) -> None:
        self._store = store
        self._meta = meta
        self._links = links
        self.max_manifest_size = max_manifest_size

    # --- reads

    async def blob(self, repo: HostedRepo, digest: Digest, *, touch: bool = False) -> StoredBlob:
        """A blob `repo` holds; BLOB_UNKNOWN otherwise. `touch` (a pushing client's
        `HEAD`, which then skips the upload) stamps it, so gc keeps it for that push."""
        if touch:
            held = str(digest) in await self._guarded(
                self._meta.touch_hosted(repo.name, [str(digest)])
            )
        else:
            held = await self.holds(repo, digest)
        if held and (blob := await self._store.open_blob(digest)):
            return blob
        raise RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})

    async def manifest(self, repo: HostedRepo, reference: str) -> StoredManifest:
        """The manifest a tag of `repo` names, or one it holds by digest; MANIFEST_UNKNOWN
        otherwise, a reference that is neither included (nothing is under it: the spec's
        conformance suite expects 404 for `.INVALID_MANIFEST_NAME`)."""
        unknown = RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": reference[:200]})
        if is_digest(reference):
            digest = Digest.parse(reference)
            if not await self.holds(repo, digest):
                raise unknown
        else:
            try:
                tag = parse_tag(reference)
            except RegistryError:
                raise unknown from None
            tagged = await self._guarded(self._meta.get_hosted_tag(repo.name, tag))
            if tagged is None:
                raise unknown
            digest = tagged.digest
        manifest = await self._store.read_manifest(digest)
        if manifest is None:
            raise unknown
        return manifest

    async def tags(self, repo: HostedRepo, *, last: str, n: int | None) -> list[str]:
        """A page of `repo`'s tags (after `last`, at most `n`)."""
        return await self._guarded(self._meta.hosted_tags(repo.name, last=last, n=n))

    async def referrers(self, repo: HostedRepo, subject: Digest) -> list[str]:
        """The descriptors (JSON) of the manifests pushed to `repo` with `subject`."""
        return await self._guarded(self._meta.referrers(repo.name, str(subject)))

    async def holds(self, repo: HostedRepo, digest: Digest) -> bool:
        return await self._guarded(self._meta.hosted_holds(repo.name, str(digest)))

    # --- writes and deletes

    async def add_blob(self, repo: HostedRepo, digest: Digest) -> None:
        """Record that `repo` holds a blob just published under `digest`."""
        await self._guarded(self._meta.add_hosted(repo.name, [str(digest)]))

    async def mount(
        self, repo: HostedRepo, digest: Digest, source: HostedRepo | UpstreamRepo
    ) -> bool:
        """Give `repo` a blob `source` holds (hosted, or cached and linked there), copying
        nothing; False when it cannot (the client then uploads it)."""
        if isinstance(source, HostedRepo):
            held = await self.holds(source, digest)
        else:
            link = Link(source.upstream.host, source.name, str(digest))
            held = await self._links.has_link(link)
        if not held or await self._blob_size(digest) is None:
            return False
        await self.add_blob(repo, digest)
        observe.hosted_pushed("mount")
        return True

    async def put_manifest(
        self, repo: HostedRepo, reference: str, content_type: str, data: bytes
    ) -> PushedManifest:
        """Validate and keep a pushed manifest, then point the tag at it (`reference` a
        tag) or check it against the digest (`reference` a digest)."""
        self._check_size(data)
        tag = None if is_digest(reference) else parse_tag(reference)
        media_type, document = _checked_manifest(content_type, data)
        if tag is None:
            digest = Digest.parse(reference)
            actual = hashlib.new(digest.algorithm, data).hexdigest()
            if actual != digest.hex:
                raise RegistryError(
                    errors.DIGEST_INVALID,
                    "the manifest does not match the digest it was put under",
                    detail={"digest": str(digest), "actual": f"{digest.algorithm}:{actual}"},
                )
        else:
            digest = Digest("sha256", hashlib.sha256(data).hexdigest())
        await self._check_references(repo, media_type, document)
        try:
            await self._store.write_manifest(StoredManifest(data, media_type, digest))
        except StoreUnavailable as exc:
            raise RegistryError(errors.STORE_UNAVAILABLE, "the store is unavailable") from exc
        pushed = await self._record(repo, digest, media_type, data, document, tag)
        observe.hosted_pushed("manifest")
        return pushed

    async def adopt_manifest(
        self, repo: HostedRepo, manifest: StoredManifest, tag: str | None
    ) -> PushedManifest:
        """Give `repo` a manifest the store already holds (a promotion by `mirror tag`),
        and point `tag` at it: checked as a pushed one is, its bytes not written again."""
        self._check_size(manifest.data)
        media_type, document = _checked_manifest(manifest.media_type, manifest.data)
        await self._check_references(repo, media_type, document)
        return await self._record(repo, manifest.digest, media_type, manifest.data, document, tag)

    async def _record(
        self,
        repo: HostedRepo,
        digest: Digest,
        media_type: str,
        data: bytes,
        document: dict[str, Any],
        tag: str | None,
    ) -> PushedManifest:
        """Record a stored manifest as held by `repo`, its subject's referrer, its tag."""
        await self._guarded(self._meta.add_hosted(repo.name, [str(digest)]))
        subject = _subject(document)
        if subject is not None:
            descriptor = _referrer_descriptor(document, media_type, digest, len(data))
            await self._guarded(
                self._meta.add_referrer(repo.name, str(subject), str(digest), descriptor)
            )
        if tag is not None:
            tagged = HostedManifest(digest, media_type, len(data))
            await self._guarded(self._meta.put_hosted_tag(repo.name, tag, tagged))
            if media_type in _INDEX_TYPES and _FALLBACK_TAG.fullmatch(tag):
                await self._record_listed_referrers(repo, document)
        return PushedManifest(digest, subject)

    async def _record_listed_referrers(self, repo: HostedRepo, document: dict[str, Any]) -> None:
        """Record as referrers the manifests a referrers-tag index lists (clients that
        write that tag, notation by default, expect them listed by the API too: the
        spec's "Enabling the Referrers API"). Each is one `repo` holds (the index was
        checked); those with a `subject` are recorded under it, from their own bytes, so
        a manifest kept before its record was written is listed as well, and once only."""
        for entry in _list(document.get("manifests")):
            digest = _descriptor_digest(entry)
            manifest = await self._store.read_manifest(digest)
            if manifest is None:
                continue
            try:
                listed = parse_manifest(manifest.data)
                subject = _subject(listed)
            except (ManifestError, RegistryError):
                continue  # not a manifest with a valid subject: not a referrer
            if subject is not None:
                descriptor = _referrer_descriptor(
                    listed, manifest.media_type, digest, len(manifest.data)
                )
                await self._guarded(
                    self._meta.add_referrer(repo.name, str(subject), str(digest), descriptor)
                )

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_manifest_size:
            raise RegistryError(
                errors.MANIFEST_TOO_LARGE,
                f"manifests are limited to {self.max_manifest_size} bytes",
            )

    async def delete_manifest(self, repo: HostedRepo, reference: str) -> None:
        """Take a manifest from `repo` with every tag naming it (`reference` a digest), or
        just one tag (`reference` a tag); MANIFEST_UNKNOWN when `repo` has neither."""
        unknown = RegistryError(errors.MANIFEST_UNKNOWN, detail={"reference": reference[:200]})
        if not is_digest(reference):
            if not await self._guarded(
                self._meta.delete_hosted_tag(repo.name, parse_tag(reference))
            ):
                raise unknown
            return
        digest = Digest.parse(reference)
        if not await self._guarded(self._meta.remove_hosted(repo.name, [str(digest)])):
            raise unknown
        if (manifest := await self._store.read_manifest(digest)) is not None:
            subject = _subject_of(manifest.data)
            if subject is not None:
                await self._guarded(
                    self._meta.remove_referrer(repo.name, str(subject), str(digest))
                )

    async def delete_blob(self, repo: HostedRepo, digest: Digest) -> None:
        """Take a blob from `repo` (the repository no longer serves it; its bytes wait for
        gc); BLOB_UNKNOWN when `repo` does not hold it."""
        unknown = RegistryError(errors.BLOB_UNKNOWN, detail={"digest": str(digest)})
        if await self._blob_size(digest) is None:
            raise unknown  # a manifest's digest, or nothing: blobs only here
        if not await self._guarded(self._meta.remove_hosted(repo.name, [str(digest)])):
            raise unknown

    async def _check_references(
        self, repo: HostedRepo, media_type: str, document: dict[str, Any]
    ) -> None:
        """MANIFEST_BLOB_UNKNOWN unless `repo` holds every blob (image) or child manifest
        (index) the manifest names. Foreign and non-distributable layers, which clients
        fetch from their `urls` and never upload, are not required; nor is `subject`, which
        the spec lets a manifest name before it exists."""
        if media_type in _IMAGE_TYPES:
            named = [document.get("config"), *_list(document.get("layers"))]
            wanted = [d for d in named if not _foreign(d)]
        else:
            wanted = _list(document.get("manifests"))
        named = [str(_descriptor_digest(descriptor)) for descriptor in wanted]
        held = await self._guarded(self._meta.touch_hosted(repo.name, named))
        missing = [digest for digest in named if digest not in held]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise RegistryError(
                errors.MANIFEST_BLOB_UNKNOWN,
                f"{repo.name} does not hold {missing[0]}{more}: push it first",
                detail={"digest": missing[0], "missing": missing},
            )

    async def _blob_size(self, digest: Digest) -> int | None:
        try:
            return await self._store.blob_size(digest)
        except StoreUnavailable:
            return None

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except MetaStoreError as exc:
            log.warning("hosted repositories unavailable: %s", exc)
            raise RegistryError(
                errors.STORE_UNAVAILABLE, "hosted repositories are unavailable; retry later"
            ) from None


def _checked_manifest(content_type: str, data: bytes) -> tuple[str, dict[str, Any]]:
    """The manifest's media type and document: the `Content-Type` it was put with, which
    must be a manifest type and the `mediaType` it declares, if any. MANIFEST_INVALID
    otherwise (containers/image then retries in another format)."""
    media_type = mediatypes.bare_type(content_type)
    if media_type not in mediatypes.MANIFEST_TYPES:
        raise RegistryError(
            errors.MANIFEST_INVALID,
            f"Content-Type {media_type or '(none)'!r} is not a manifest type this registry stores",
        )
    try:
        document = parse_manifest(data)
    except ManifestError as exc:
        raise RegistryError(errors.MANIFEST_INVALID, f"the manifest is {exc}") from None
    declared = declared_type(document)
    if declared is not None and declared != media_type:
        raise RegistryError(
            errors.MANIFEST_INVALID,
            f"the manifest declares mediaType {declared!r} but was put as {media_type!r}",
        )
    if document.get("schemaVersion") != 2:
        raise RegistryError(errors.MANIFEST_INVALID, "schemaVersion must be 2")
    for descriptor in _descriptors(media_type, document):
        _descriptor_digest(descriptor)
    _subject(document)  # refused before anything is kept
    return media_type, document


def _descriptors(media_type: str, document: dict[str, Any]) -> list[Any]:
    if media_type in _IMAGE_TYPES:
        return [document.get("config"), *_list(document.get("layers"))]
    return _list(document.get("manifests"))


def _descriptor_digest(descriptor: Any) -> Digest:
    if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
        raise RegistryError(errors.MANIFEST_INVALID, "a descriptor has no digest")
    try:
        return Digest.parse(descriptor["digest"])
    except RegistryError:
        raise RegistryError(
            errors.MANIFEST_INVALID,
            "a descriptor has an invalid digest",
            detail={"digest": str(descriptor["digest"])[:200]},
        ) from None


def _foreign(descriptor: Any) -> bool:
    """A layer clients fetch from elsewhere (its `urls`), never pushed."""
    if not isinstance(descriptor, dict):
        return False
    media_type = str(descriptor.get("mediaType", ""))
    return (
        bool(descriptor.get("urls")) or "nondistributable" in media_type or "foreign" in media_type
    )


def _subject(document: dict[str, Any]) -> Digest | None:
    subject = document.get("subject")
    if subject is None:
        return None
    return _descriptor_digest(subject)


def _referrer_descriptor(
    document: dict[str, Any], media_type: str, digest: Digest, size: int
) -> str:
    """The descriptor the referrers API lists for a manifest: its type, digest and size,
    its `artifactType` (else its config's media type, for an image) and its own
    annotations, copied."""
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": str(digest), "size": size}
    artifact_type = document.get("artifactType")
    config = document.get("config")
    if not isinstance(artifact_type, str) and isinstance(config, dict):
        artifact_type = config.get("mediaType")
    if isinstance(artifact_type, str):
        descriptor["artifactType"] = artifact_type
    if isinstance(annotations := document.get("annotations"), dict):
        descriptor["annotations"] = annotations
    return json.dumps(descriptor, sort_keys=True)


def _subject_of(data: bytes) -> Digest | None:
    """The subject a stored manifest names, if it names one that parses."""
    try:
        return _subject(parse_manifest(data))
    except (ManifestError, RegistryError):
        return None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
