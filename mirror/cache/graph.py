"""Walking the manifest graph: from root manifests to the index children a platform list
selects, and to the blobs (config and layers) every manifest names.

Pinning, `mirror ls` and `mirror rm`, prefetch, export, import's check and the links a
manifest cached for a repository gives it (`held_with`) all walk it with
`ManifestWalk`. The walk itself does no I/O, so one walk serves blocking and async callers:
iterating it yields each manifest to read (an `Edge`), and the caller reads it where it
lives (the store, an upstream, a bundle's temp files) and hands the bytes to `visit`. What a
manifest that cannot be read means is the caller's hook: fetched (prefetch), reported
(export, import) or skipped (ls, rm, pinning). `walk_store` is that loop over the store.

The order is depth first, an index's children in the index's order; `finished` lists the
manifests children first, the order in which to publish them so that whatever names a
manifest is never there before it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from mirror.cache.references import References, references
from mirror.platforms import Selector
from mirror.reference import Digest
from mirror.storage import ContentStore, StoredManifest, StoreUnavailable


@dataclass(frozen=True)
class Edge:
    """A manifest the walk reached, and how: the platform and media type the index that
    names it (`parent`, None for a root) gives it."""

    digest: Digest
    platform: str | None = None
    parent: Digest | None = None
    media_type: str | None = None


def every_child(platform: str | None) -> bool:
    """The selector that takes every child of an index."""
    return True


class ManifestWalk:
    """One walk from `roots`; each manifest is asked for once, whatever names it again."""

    def __init__(self, roots: Iterable[Digest], select: Selector = every_child) -> None:
        self._select = select
        # (edge, whether its children are done: then it is finished)
        self._stack: list[tuple[Edge, bool]] = [(Edge(d), False) for d in reversed(list(roots))]
        self.seen: dict[Digest, Edge] = {}  # every manifest asked for, in order
        self.visited: dict[Digest, References] = {}  # the ones read, in order
        self.finished: list[Digest] = []  # the ones read, each after its children
        self.blobs: dict[Digest, Digest] = {}  # blob -> the first manifest naming it
        self.omitted: set[Digest] = set()  # children `select` left out
        self.unparseable: set[Digest] = set()  # read, but no manifest: they name nothing

    def __iter__(self) -> Iterator[Edge]:
        while self._stack:
            edge, done = self._stack.pop()
            if done:
                self.finished.append(edge.digest)
            elif edge.digest not in self.seen:
                self.seen[edge.digest] = edge
                yield edge

    def visit(self, edge: Edge, data: bytes) -> References:
        """The bytes of the manifest `edge` names: its selected children are walked next,
        its blobs noted. Its references."""
        refs = references(data, edge.digest)
        self.visited[edge.digest] = refs
        if refs.unparseable:
            self.unparseable.add(edge.digest)
        self._stack.append((edge, True))
        for child in reversed(refs.manifests):
            if self._select(child.platform):
                walked = Edge(child.digest, child.platform, edge.digest, child.media_type)
                self._stack.append((walked, False))
            else:
                self.omitted.add(child.digest)
        for blob in refs.blobs:
            self.blobs.setdefault(blob, edge.digest)
        return refs

    @property
    def reached(self) -> set[Digest]:
        """Every manifest and blob the walk named, read or not."""
        return set(self.seen) | set(self.blobs)


def _skip(edge: Edge) -> None:
    pass


async def walk_store(
    store: ContentStore,
    roots: Iterable[Digest],
    select: Selector = every_child,
    *,
    missing: Callable[[Edge], None] = _skip,
) -> tuple[ManifestWalk, dict[Digest, StoredManifest]]:
    """Walk the manifests the store holds; `missing` is told of each one it lacks. The walk,
    and the manifests read, in order."""
    walk = ManifestWalk(roots, select)
    manifests: dict[Digest, StoredManifest] = {}
    for edge in walk:
        manifest = await store.read_manifest(edge.digest)
        if manifest is None:
            missing(edge)
            continue
        manifests[edge.digest] = manifest
        walk.visit(edge, manifest.data)
    return walk, manifests


async def held_with(store: ContentStore, root: Digest, data: bytes | None = None) -> set[Digest]:
    """What a repository holds along with the manifest `root`: the manifest, its config
    and layers, an index's children, and what the children the store holds name in turn.
    `data` is root's bytes when the store does not hold them yet. These are the links
    written when a manifest is cached for a repository."""
    walk = ManifestWalk([root])
    for edge in walk:
        if edge.digest == root and data is not None:
            walk.visit(edge, data)
        elif (manifest := await _read_if_reachable(store, edge.digest)) is not None:
            walk.visit(edge, manifest.data)
    return walk.reached


async def _read_if_reachable(store: ContentStore, digest: Digest) -> StoredManifest | None:
    """The stored manifest; None also while the store is unreachable (a child not read is
    linked when it is fetched, as one the store lacks would be)."""
    try:
        return await store.read_manifest(digest)
    except StoreUnavailable:
        return None


async def reachable(
    store: ContentStore, roots: Iterable[Digest], select: Selector = every_child
) -> set[Digest]:
    """`roots` and everything their cached manifests refer to, recursively, whether cached
    or not; an index's children only where `select(platform)` says so."""
    walk, _ = await walk_store(store, roots, select)
    return walk.reached
