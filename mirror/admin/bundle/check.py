"""Checking a staged bundle: index.json and tags.json are what `mirror export` writes, and
everything they name, down the manifest graph, is in the bundle and consistent."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mirror import mediatypes
from mirror.admin.bundle.layout import (
    INDEX_JSON,
    KNOWN_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_LAYOUT,
    TAGS_JSON,
    TAGS_VERSION,
    BundleError,
    Staged,
    entry_name,
)
from mirror.cache.graph import ManifestWalk
from mirror.errors import RegistryError
from mirror.manifestjson import ManifestError, declared_type, parse_manifest
from mirror.meta.store import TagKey, TagRecord
from mirror.reference import Digest, is_registry_host, parse_name, parse_tag
from mirror.storage import StoredManifest
from mirror.upstream.hosting import HOSTED, parse_hosted_name


@dataclass(frozen=True)
class BundleImage:
    reference: str
    upstream: str  # HOSTED for an image of a hosted repository
    repository: str
    tag: str | None
    digest: Digest


@dataclass
class Bundle:
    """A verified bundle, its content in the store's writers until committed or discarded."""

    staged: dict[Digest, Staged] = field(default_factory=dict)
    images: list[BundleImage] = field(default_factory=list)
    hosted: list[BundleImage] = field(default_factory=list)  # images of hosted repositories
    records: list[tuple[TagKey, TagRecord]] = field(default_factory=list)
    manifests: dict[Digest, StoredManifest] = field(default_factory=dict)  # children first
    blobs: list[Digest] = field(default_factory=list)
    unreferenced: int = 0  # entries nothing names (not imported)
    size: int = 0  # bytes of content

    async def discard(self) -> None:
        """Abort the writers that were not committed (manifests are published from their
        bytes, so theirs are never committed): nothing stays behind."""
        for staged in self.staged.values():
            await staged.writer.abort()


def check(staged: dict[Digest, Staged], metadata: dict[str, bytes]) -> Bundle:
    """The bundle the staged entries and metadata make, once everything index.json and
    tags.json name is there and consistent; entries nothing names are dropped."""
    index, tags = _documents(metadata)
    bundle = Bundle(dict(staged))
    media_types: dict[Digest, str] = {}  # what the descriptors and tags.json say
    listed = _field(tags, "manifests", dict, TAGS_JSON)
    for text, media_type in listed.items():
        if not isinstance(media_type, str):
            raise BundleError(TAGS_JSON, f"manifests: {text}: media type is not a string")
        media_types[_digest(text, TAGS_JSON)] = media_type
    omitted = {_digest(t, TAGS_JSON) for t in _field(tags, "omitted", list, TAGS_JSON)}

    roots = _index_roots(index, staged, media_types)
    for item in _field(tags, "images", list, TAGS_JSON):
        image = _image(item)
        if (image.digest, INDEX_JSON) not in roots:
            raise BundleError(TAGS_JSON, f"image {image.reference} is not in index.json")
        bundle.images.append(image)
    hosted = _field(tags, "hosted", list, TAGS_JSON) if "hosted" in tags else []
    for item in hosted:  # bundles from before hosting have none
        image = _hosted_image(item)
        if (image.digest, INDEX_JSON) not in roots:
            raise BundleError(TAGS_JSON, f"image {image.reference} is not in index.json")
        bundle.hosted.append(image)
    for item in _field(tags, "tags", list, TAGS_JSON):
        key, record = _record(item)
        media_types.setdefault(record.digest, record.media_type)
        roots.append((record.digest, TAGS_JSON))
        bundle.records.append((key, record))

    _check_graph(bundle, roots, media_types, omitted)
    _check_records(bundle)
    used = set(bundle.manifests) | set(bundle.blobs)
    for digest in [d for d in bundle.staged if d not in used]:
        del bundle.staged[digest]
        bundle.unreferenced += 1
    bundle.size = sum(s.size for s in bundle.staged.values())
    return bundle


def _documents(metadata: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """index.json and tags.json, once oci-layout says an OCI image layout."""
    layout = _json_object(OCI_LAYOUT, metadata.get(OCI_LAYOUT), "not an OCI image layout")
    if not isinstance(layout.get("imageLayoutVersion"), str):
        raise BundleError(OCI_LAYOUT, "no imageLayoutVersion")
    index = _json_object(INDEX_JSON, metadata.get(INDEX_JSON), "not an OCI image layout")
    tags = _json_object(
        TAGS_JSON, metadata.get(TAGS_JSON), "not a mirror bundle (make one with mirror export)"
    )
    if tags.get("version") != TAGS_VERSION:
        raise BundleError(TAGS_JSON, f"version {tags.get('version')!r} is not {TAGS_VERSION}")
    return index, tags


def _index_roots(
    index: dict[str, Any], staged: dict[Digest, Staged], media_types: dict[Digest, str]
) -> list[tuple[Digest, str]]:
    """The manifests index.json names, each with who names it."""
    roots: list[tuple[Digest, str]] = []
    for descriptor in _field(index, "manifests", list, INDEX_JSON):
        if not isinstance(descriptor, dict):
            raise BundleError(INDEX_JSON, "a descriptor is not a JSON object")
        digest = _digest(descriptor.get("digest"), INDEX_JSON)
        if digest not in staged:
            raise BundleError(INDEX_JSON, f"names {digest}, which is not in the bundle")
        if descriptor.get("size") != staged[digest].size:
            raise BundleError(
                INDEX_JSON, f"says {digest} is {descriptor.get('size')} bytes; it is not"
            )
        if isinstance(descriptor.get("mediaType"), str):
            media_types.setdefault(digest, descriptor["mediaType"])
        roots.append((digest, INDEX_JSON))
    return roots


def _check_graph(
    bundle: Bundle,
    roots: list[tuple[Digest, str]],
    media_types: dict[Digest, str],
    omitted: set[Digest],
) -> None:
    """Read every manifest reachable from the roots (which must be there, except index
    children export left out); note them children first, and the blobs they name."""
    named_by: dict[Digest, str] = {}
    for digest, who in roots:
        named_by.setdefault(digest, who)
    walk = ManifestWalk(digest for digest, _ in roots)
    read: dict[Digest, bytes] = {}
    for edge in walk:
        who = f"manifest {edge.parent}" if edge.parent is not None else named_by[edge.digest]
        staged = bundle.staged.get(edge.digest)
        if staged is None:
            if edge.digest in omitted:
                continue
            raise BundleError(entry_name(edge.digest), f"named by {who}, but not in the bundle")
        if edge.media_type is not None:
            media_types.setdefault(edge.digest, edge.media_type)
        read[edge.digest] = _manifest(edge.digest, staged, who, media_types)
        refs = walk.visit(edge, read[edge.digest])
        for blob in refs.blobs:
            if blob not in bundle.staged:
                raise BundleError(
                    entry_name(blob), f"named by manifest {edge.digest}, but not in the bundle"
                )
    bundle.manifests = {d: StoredManifest(read[d], media_types[d], d) for d in walk.finished}
    bundle.blobs = [b for b in walk.blobs if b not in bundle.manifests]


def _manifest(digest: Digest, staged: Staged, who: str, media_types: dict[Digest, str]) -> bytes:
    """A staged manifest's bytes, once it is a JSON object with a manifest media type (its
    own, else what names it says). Staging kept the bytes of every entry that may be one."""
    if staged.size > MAX_MANIFEST_BYTES:
        raise BundleError(entry_name(digest), "a manifest larger than 4 MiB")
    if staged.data is None:
        raise BundleError(entry_name(digest), f"named by {who} as a manifest, but not JSON")
    data = staged.data
    try:
        document = parse_manifest(data)
    except ManifestError as exc:
        raise BundleError(entry_name(digest), f"a manifest that cannot be parsed: {exc}") from None
    if (declared := declared_type(document)) is not None:
        media_types[digest] = declared  # its own word, whatever names it says
    if digest not in media_types:
        raise BundleError(entry_name(digest), "a manifest without a media type")
    if not mediatypes.is_manifest_type(kind := media_types[digest]):
        raise BundleError(entry_name(digest), f"media type {kind!r} is not a manifest type")
    return data


def _check_records(bundle: Bundle) -> None:
    """Every tag record names a manifest in the bundle, with its size."""
    for key, record in bundle.records:
        digest = record.digest
        if digest not in bundle.manifests:
            raise BundleError(
                TAGS_JSON,
                f"the record of {key.upstream}/{key.repo}:{key.tag} names {digest}, "
                "which is not in the bundle",
            )
        if record.size != bundle.staged[digest].size:
            raise BundleError(
                TAGS_JSON,
                f"the record of {key.upstream}/{key.repo}:{key.tag} says {record.size} bytes; "
                f"{digest} is {bundle.staged[digest].size}",
            )


def _json_object(name: str, data: bytes | None, what: str) -> dict[str, Any]:
    if data is None:
        raise BundleError(None, f"no {name}: {what}")
    try:
        document = json.loads(data)
    except RecursionError:
        raise BundleError(name, "JSON nested too deeply") from None
    except ValueError as exc:
        raise BundleError(name, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BundleError(name, "not a JSON object")
    return document


def _field(document: dict[str, Any], name: str, kind: type, entry: str) -> Any:
    value = document.get(name)
    if not isinstance(value, kind):
        raise BundleError(entry, f"{name}: expected a JSON {kind.__name__}")
    return value


def _digest(value: Any, entry: str) -> Digest:
    if not isinstance(value, str):
        raise BundleError(entry, f"{value!r} is not a digest")
    try:
        return Digest.parse(value)
    except RegistryError as exc:
        raise BundleError(entry, f"{value[:100]}: {exc}") from None


def _image(item: Any) -> BundleImage:
    if not isinstance(item, dict):
        raise BundleError(TAGS_JSON, "an image is not a JSON object")
    try:
        upstream, repository = _repository(item)
        tag = item.get("tag")
        if tag is not None:
            parse_tag(_str(item, "tag"))
        return BundleImage(
            _str(item, "reference"), upstream, repository, tag, _digest(item.get("digest"), "")
        )
    except (RegistryError, BundleError) as exc:
        raise BundleError(TAGS_JSON, f"image {str(item)[:200]}: {exc}") from None


def _hosted_image(item: Any) -> BundleImage:
    if not isinstance(item, dict):
        raise BundleError(TAGS_JSON, "a hosted image is not a JSON object")
    try:
        repository = parse_hosted_name(_str(item, "repository"))
        tag = item.get("tag")
        if tag is not None:
            parse_tag(_str(item, "tag"))
        return BundleImage(
            _str(item, "reference"), HOSTED, repository, tag, _digest(item.get("digest"), "")
        )
    except (RegistryError, BundleError) as exc:
        raise BundleError(TAGS_JSON, f"hosted image {str(item)[:200]}: {exc}") from None


def _record(item: Any) -> tuple[TagKey, TagRecord]:
    if not isinstance(item, dict):
        raise BundleError(TAGS_JSON, "a tag record is not a JSON object")
    try:
        upstream, repository = _repository(item)
        tag = parse_tag(_str(item, "tag"))
        accept = _str(item, "accept")
        types = frozenset(accept.split(","))
        if not types <= KNOWN_TYPES or mediatypes.accept_class(types) != accept:
            raise BundleError(None, f"accept {accept!r} is not an Accept class")
        size, confirmed = item.get("size"), item.get("confirmedAt")
        if not isinstance(size, int) or not isinstance(confirmed, int | float):
            raise BundleError(None, "size and confirmedAt must be numbers")
        digest = _digest(item.get("digest"), "")
        return TagKey(upstream, repository, tag, accept), TagRecord(
            digest, _str(item, "mediaType"), size, float(confirmed)
        )
    except (RegistryError, BundleError) as exc:
        raise BundleError(TAGS_JSON, f"tag record {str(item)[:200]}: {exc}") from None


def _repository(item: dict[str, Any]) -> tuple[str, str]:
    upstream = _str(item, "upstream")
    if not is_registry_host(upstream):
        raise BundleError(None, f"{upstream!r} is not a registry host")
    return upstream, parse_name(_str(item, "repository"))


def _str(item: dict[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise BundleError(None, f"{name} must be a non-empty string")
    return value
