"""Manifest media types: the allow-list, the type a manifest is stored as, and `Accept`
negotiation.

The same tag can resolve to different manifests depending on what the client accepts (a
registry answers a client that does not accept manifest lists with one platform's manifest),
so the mirror reduces every `Accept` to a canonical *class*: the set of manifest types it
admits. Tag lookups are keyed by that class and the upstream is asked with exactly it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

#: The modern manifest types, in the order they are sent upstream.
MANIFEST_TYPES: tuple[str, ...] = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
_KNOWN_TYPES = (*MANIFEST_TYPES, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)

BLOB_CONTENT_TYPE = "application/octet-stream"


class MediaTypeError(ValueError):
    """A manifest answered with a type the mirror will not store or serve; says why."""


def is_manifest_type(media_type: str) -> bool:
    """Whether `media_type` (bare) is on the allow-list of manifest types: anything else
    (`text/html` from a captive portal, `application/json`) is never stored or served as a
    manifest, so a client cannot be made to read it as something else."""
    return media_type in _KNOWN_TYPES


def manifest_type(declared: str | None, header: str) -> str:
    """The type a manifest is stored and served as: the `mediaType` it declares itself
    when it does (so every upstream sharing its digest agrees, whatever its headers say),
    and the upstream's `Content-Type`, if sent, must be that same type; else the header's
    type. Either must be on the allow-list. `MediaTypeError` otherwise."""
    sent = bare_type(header)
    if declared is not None:
        if not is_manifest_type(declared):
            raise MediaTypeError(f"declares media type {declared!r}, not a manifest type")
        if sent and sent != declared:
            raise MediaTypeError(f"declares media type {declared} but was sent as {sent!r}")
        return declared
    if not is_manifest_type(sent):
        raise MediaTypeError(f"was sent as {sent!r}, not a manifest type")
    return sent


def bare_type(content_type: str) -> str:
    """Strip parameters (`; charset=utf-8`) and case from a media type."""
    return content_type.split(";", 1)[0].strip().lower()


def accepted_types(accept_headers: Iterable[str]) -> frozenset[str]:
    """The manifest types a client's `Accept` header(s) admit.

    Wildcards (`*/*`, `application/*`) and an absent header admit every modern type; q=0
    excludes a type. Types the mirror does not know are ignored: they cannot change which
    manifest a registry picks.
    """
    return _accepted(tuple(accept_headers))


# Clients send the same few Accept headers on every manifest request: each is parsed once.
@functools.lru_cache(maxsize=256)
def _accepted(accept_headers: tuple[str, ...]) -> frozenset[str]:
    admitted: set[str] = set()
    seen_any = False
    for header in accept_headers:
        for item in header.split(","):
            media, _, params = item.partition(";")
            media = media.strip().lower()
            if not media:
                continue
            seen_any = True
            if _q_is_zero(params):
                continue
            if media in ("*/*", "application/*"):
                admitted.update(MANIFEST_TYPES)
            elif media in _KNOWN_TYPES:
                admitted.add(media)
    if not seen_any or not admitted:
        # No Accept, or only types no registry negotiates on (`application/json` from curl):
        # ask for everything modern rather than for nothing.
        return frozenset(MANIFEST_TYPES)
    return frozenset(admitted)


def _q_is_zero(params: str) -> bool:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value.strip()) == 0.0
            except ValueError:
                return False
    return False


@functools.lru_cache(maxsize=256)
def accept_class(types: frozenset[str]) -> str:
    """A stable key for a set of accepted types (the tag cache is keyed by it)."""
    return ",".join(sorted(types))


def accept_types(accept_class_key: str) -> frozenset[str]:
    """The types of a class back from its key (`accept_class`)."""
    return frozenset(accept_class_key.split(","))


def upstream_accept_header(types: frozenset[str]) -> str:
    """The `Accept` the mirror asks the upstream for a tag with, for a client that accepts
    `types`: those, and always the Docker image manifest. A registry serves a Docker image
    as it stores it whatever the client accepts (distribution 3 does); without that type in
    `Accept`, some answer 400 instead (distribution 2.8, which tries a schema1 rewrite) and
    others rewrite it on the fly into a manifest they cannot serve by digest. Adding it
    changes nothing else: lists, indexes and OCI manifests are negotiated on their own types.
    """
    return accept_header(types | {DOCKER_MANIFEST})


def accept_header(types: frozenset[str]) -> str:
    """The `Accept` header the mirror sends upstream for a class: canonical order, so equal
    classes ask the upstream the same question."""
    ordered = [t for t in _KNOWN_TYPES if t in types]
    return ", ".join(ordered)
