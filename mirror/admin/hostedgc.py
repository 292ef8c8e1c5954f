"""The hosted half of `mirror gc`: what each hosted repository holds that nothing needs.

A repository's blobs are needed while one of its live manifests names them; its manifests
are all live, or with `delete_untagged` only those a tag reaches: the tagged ones, their
children (an index's platforms), and referrers (signatures, SBOMs) whose subject is live.
Whatever was added or touched within the grace period is live whatever names it: a push
in progress uploads blobs, and child manifests, before what names them.

This takes content from a repository's records only, each removal conditional on its stamp
being still older than the grace period (a push that touched it meanwhile keeps it); the
bytes go in the store's sweep once nothing else holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror.cache.references import references
from mirror.errors import RegistryError
from mirror.manifestjson import ManifestError, parse_manifest
from mirror.meta.store import HostedContent
from mirror.reference import Digest
from mirror.storage import ContentStore


@dataclass(frozen=True)
class HostedManifestNode:
    """A manifest a repository holds: what it names directly, and its subject."""

    blobs: frozenset[str]
    children: frozenset[str]
    subject: str | None


@dataclass
class HostedGarbage:
    """What gc takes from one hosted repository."""

    repo: str
    manifests: set[str] = field(default_factory=set)
    blobs: set[str] = field(default_factory=set)
    subjects: dict[str, str] = field(default_factory=dict)  # removed referrer -> subject


async def hosted_garbage(
    store: ContentStore,
    meta: HostedContent,
    repo: str,
    *,
    cutoff: float,
    delete_untagged: bool,
) -> HostedGarbage:
    """What `repo` holds that is not needed and was last added or touched before
    `cutoff`."""
    content = await meta.hosted_content(repo)
    tagged = {str(m.digest) for m in (await meta.hosted_tagged(repo)).values()}
    nodes: dict[str, HostedManifestNode] = {}
    for digest in content:
        if (manifest := await store.read_manifest(Digest.parse(digest))) is not None:
            nodes[digest] = _node(manifest.data, Digest.parse(digest))
    recent = {digest for digest, stamp in content.items() if stamp >= cutoff}
    live = _reached(nodes, (tagged | recent) & set(nodes)) if delete_untagged else set(nodes)
    garbage = HostedGarbage(repo)
    for digest in set(nodes) - live - recent:
        garbage.manifests.add(digest)
        if (subject := nodes[digest].subject) is not None:
            garbage.subjects[digest] = subject
    named = {blob for digest in live for blob in nodes[digest].blobs}
    garbage.blobs = set(content) - set(nodes) - named - recent
    return garbage


async def remove_hosted_garbage(
    meta: HostedContent, garbage: HostedGarbage, *, cutoff: float
) -> HostedGarbage:
    """Take the garbage from the repository's records, except what was added or touched
    since `cutoff`; what went."""
    removed = await meta.remove_hosted(
        garbage.repo, sorted(garbage.manifests | garbage.blobs), added_before=cutoff
    )
    gone = HostedGarbage(garbage.repo, garbage.manifests & removed, garbage.blobs & removed)
    for referrer in gone.manifests:
        if (subject := garbage.subjects.get(referrer)) is not None:
            gone.subjects[referrer] = subject
            await meta.remove_referrer(garbage.repo, subject, referrer)
    return gone


def _reached(nodes: dict[str, HostedManifestNode], roots: set[str]) -> set[str]:
    """The manifests reached from `roots` through children, and referrers of what is
    reached."""
    live: set[str] = set()
    pending = list(roots)
    while pending:
        while pending:
            digest = pending.pop()
            if digest in live or digest not in nodes:
                continue
            live.add(digest)
            pending.extend(nodes[digest].children)
        pending = [d for d, node in nodes.items() if d not in live and node.subject in live]
    return live


def _node(data: bytes, digest: Digest) -> HostedManifestNode:
    named = references(data, digest)
    return HostedManifestNode(
        frozenset(str(blob) for blob in named.blobs),
        frozenset(str(child.digest) for child in named.manifests),
        _subject(data),
    )


def _subject(data: bytes) -> str | None:
    try:
        subject = parse_manifest(data).get("subject")
    except ManifestError:
        return None
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        return None
    try:
        return str(Digest.parse(subject["digest"]))
    except RegistryError:
        return None
