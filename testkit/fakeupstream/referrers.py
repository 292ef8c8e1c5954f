"""Referrers (OCI 1.1) in the fake registry: the manifests of a repository whose `subject`
is a given digest, served by the referrers API (paged by an opaque `next`, as a registry
may) or, for a registry without that API, kept in the fallback tag `sha256-<hex>` the way
clients maintain it there (read, add, write back)."""

from __future__ import annotations

import json
from typing import Any

from .content import Content, Repo
from .images import OCI_INDEX, Manifest
from .wire import Reply, json_body

__all__ = ["fallback_tag", "referrers_page", "subject_of", "tag_index"]


def subject_of(manifest: Manifest) -> str | None:
    """The digest a manifest names as its `subject`, if any."""
    subject = json.loads(manifest.data).get("subject")
    return subject["digest"] if isinstance(subject, dict) else None


def fallback_tag(subject: str) -> str:
    """The referrers tag schema's tag for a sha256/sha512 digest."""
    algorithm, encoded = subject.split(":", 1)
    return f"{algorithm}-{encoded[:64]}"


def descriptor(manifest: Manifest) -> dict[str, Any]:
    """A referrer as the API lists it: type, digest, size, artifactType (its own, else its
    config's type) and its annotations."""
    document = json.loads(manifest.data)
    entry: dict[str, Any] = {
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
    }
    artifact_type = document.get("artifactType") or (document.get("config") or {}).get("mediaType")
    if artifact_type:
        entry["artifactType"] = artifact_type
    if document.get("annotations"):
        entry["annotations"] = document["annotations"]
    return entry


def referrers_of(repo: Repo | None, subject: str) -> list[dict[str, Any]]:
    if repo is None:
        return []
    found = [m for m in repo.manifests.values() if subject_of(m) == subject]
    return sorted((descriptor(m) for m in found), key=lambda d: str(d["digest"]))


def referrers_page(
    content: Content, name: str, subject: str, start: int, page_size: int | None
) -> Reply:
    """The API's answer: entries `start` on, at most `page_size`, with a `Link` to the rest
    (a relative URL with an opaque `next`, not the mirror's `n`/`last`)."""
    entries = referrers_of(content.repos.get(name), subject)
    end = len(entries) if page_size is None else start + page_size
    headers = {"Content-Type": OCI_INDEX}
    if end < len(entries):
        headers["Link"] = f'</v2/{name}/referrers/{subject}?next={end}>; rel="next"'
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries[start:end]}
    return Reply(200, headers, json_body(index))


def tag_index(content: Content, name: str, subject: str) -> Manifest:
    """The fallback tag's index listing every referrer of `subject` in `name`."""
    entries = referrers_of(content.repos.get(name), subject)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return Manifest(json.dumps(index, indent=2).encode(), OCI_INDEX)
