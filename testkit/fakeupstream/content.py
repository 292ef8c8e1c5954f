"""What the fake registry holds: repositories of manifests, tags and blobs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .images import Blob, Manifest

NAME_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")


@dataclass
class Repo:
    """Content of one repository name."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, Blob] = field(default_factory=dict)


class Content:
    """Repositories by name, and every blob by digest (the CDN serves blobs of any repository)."""

    def __init__(self) -> None:
        """Start empty."""
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, Blob] = {}

    def push_image(self, repo: str, tag: str | None, manifest: Manifest) -> None:
        """Store a manifest (an index with all its children) and every blob under ``repo``."""
        if not NAME_RE.match(repo):
            raise ValueError(f"invalid repository name {repo!r}")
        if tag is not None and not TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        store = self.repos.setdefault(repo, Repo())
        pending = [manifest]
        while pending:
            current = pending.pop()
            store.manifests[current.digest] = current
            pending.extend(current.children)
        for blob in manifest.all_blobs():
            store.blobs[blob.digest] = blob
            self.blobs[blob.digest] = blob
        if tag is not None:
            store.tags[tag] = manifest.digest

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Store a loose blob under ``repo`` (creating the repository if needed)."""
        if not NAME_RE.match(repo):
            raise ValueError(f"invalid repository name {repo!r}")
        self.repos.setdefault(repo, Repo()).blobs[blob.digest] = blob
        self.blobs[blob.digest] = blob

    def delete_tag(self, repo: str, tag: str) -> None:
        """Remove a tag (its manifest stays reachable by digest, like on a real registry)."""
        del self.repos[repo].tags[tag]
