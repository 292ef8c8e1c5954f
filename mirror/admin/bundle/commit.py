"""Committing a checked bundle: its staged content into the store (blobs, then manifests
children first, so whatever a server sees is complete), then its tag records and links
(each image's repository holds what its manifests name; the catalog is read from links).
`_commit_content` is the one place import publishes content: a blob by committing its
verified writer, a manifest from its bytes with `write_manifest`.

An image of a hosted repository is recorded into it as a push would record it (what it
holds, its tag) when this mirror hosts that repository too; otherwise it is imported as
cached content of the repository its name addresses (`local/app` is `docker.io/local/app`),
linked and tagged as a pull would have left it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from mirror import mediatypes
from mirror.admin.bundle.check import Bundle, BundleImage
from mirror.admin.bundle.layout import KNOWN_TYPES
from mirror.admin.bundle.progress import count
from mirror.cache.graph import ManifestWalk
from mirror.meta.store import Link, TagKey, TagRecord
from mirror.reference import Digest, parse_image
from mirror.storage import ContentStore
from mirror.units import human_size
from mirror.upstream.hosting import HostedRepo, Hosting
from mirror.wiring import DataDir

# Tag records are kept per Accept class (the same tag names an index for one client and a
# single manifest for another), and an offline mirror answers only classes it has a record
# for. Import also writes, for each tag, a record for these classes when the bundle has
# none: what skopeo and podman (every type), containerd (`*/*`: the modern four) and the
# Docker Engine (the modern four, with or without signed schema 1) send.
CLIENT_ACCEPT_CLASSES: tuple[frozenset[str], ...] = (
    frozenset(mediatypes.MANIFEST_TYPES),
    frozenset({*mediatypes.MANIFEST_TYPES, mediatypes.DOCKER_SCHEMA1_SIGNED}),
    frozenset(KNOWN_TYPES),
)


@dataclass
class ImportReport:
    images: int = 0
    objects: int = 0
    new_objects: int = 0
    bytes: int = 0
    new_bytes: int = 0
    records_new: int = 0
    records_updated: int = 0
    hosted_tags: int = 0  # hosted tags set (new, or moved to the bundle's manifest)
    unreferenced: int = 0
    kept: list[str] = field(default_factory=list)  # records the mirror had newer
    unserved: set[str] = field(default_factory=set)  # upstream hosts it does not serve

    def summary(self, source: str, *, dry_run: bool) -> str:
        verb = "would import" if dry_run else "imported"
        new = (
            f"{self.new_objects} new ({human_size(self.new_bytes)})"
            if self.new_objects
            else "nothing new"
        )
        records = f"{count(self.records_new, 'tag record')} new, {self.records_updated} updated"
        if self.hosted_tags:
            records += f"; {count(self.hosted_tags, 'hosted tag')} set"
        extra = f"; {self.unreferenced} entries nothing names skipped" if self.unreferenced else ""
        return (
            f"{verb} {source}: {count(self.images, 'image')}, {count(self.objects, 'object')} "
            f"({human_size(self.bytes)}), {new}; {records}{extra}"
        )


async def import_bundle(data: DataDir, bundle: Bundle, *, dry_run: bool = False) -> ImportReport:
    """Put a checked bundle's content into the store, then its tag records and links.
    Content the store has is skipped; a tag record the mirror holds newer than the bundle's
    stays."""
    report = ImportReport(
        images=len(bundle.images) + len(bundle.hosted),
        objects=len(bundle.staged),
        bytes=bundle.size,
        unreferenced=bundle.unreferenced,
    )
    hosting = Hosting(data.config.hosting.hosted)
    hosted = [(repo, i) for i in bundle.hosted if (repo := hosting.match(i.repository, None))]
    cached = [_as_cached(i) for i in bundle.hosted if not hosting.claims(i.repository, None)]
    images = [*bundle.images, *cached]
    records = [*bundle.records, *_cached_records(bundle, cached)]
    await _commit_content(data.store, bundle, report, dry_run=dry_run)
    await _commit_hosted(data, bundle, hosted, report, dry_run=dry_run)
    await _commit_records(data, records, report, dry_run=dry_run)
    await _commit_links(data, bundle, images, records, report, dry_run=dry_run)
    return report


async def _commit_content(
    store: ContentStore, bundle: Bundle, report: ImportReport, *, dry_run: bool
) -> None:
    """Blobs first, then manifests children first: what names content comes after it."""
    for digest in bundle.blobs:
        staged = bundle.staged[digest]
        if await store.blob_size(digest) is not None:
            continue
        report.new_objects += 1
        report.new_bytes += staged.size
        if not dry_run:
            await staged.writer.commit()
    for digest, manifest in bundle.manifests.items():
        if await store.has_manifest(digest):
            continue
        report.new_objects += 1
        report.new_bytes += len(manifest.data)
        if not dry_run:
            await store.write_manifest(manifest)


async def _commit_hosted(
    data: DataDir,
    bundle: Bundle,
    images: list[tuple[HostedRepo, BundleImage]],
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    """Record each hosted image into its repository, blobs and then manifests children
    first, as a push does (a referrer's subject noted, a manifest refused that names what
    the repository lacks or exceeds `max_manifest_size`), then point its tag at it."""
    hosted = data.hosted()
    for repo, image in images:
        walk = _walk(bundle, [image.digest])
        tagged = await data.meta.get_hosted_tag(repo.name, image.tag) if image.tag else None
        if image.tag is not None and (tagged is None or tagged.digest != image.digest):
            report.hosted_tags += 1
        if dry_run:
            continue
        for blob in walk.blobs:
            if blob not in bundle.manifests:
                await hosted.add_blob(repo, blob)
        for digest in walk.finished:
            tag = image.tag if digest == image.digest else None
            await hosted.adopt_manifest(repo, bundle.manifests[digest], tag)


def _as_cached(image: BundleImage) -> BundleImage:
    """A hosted image as the cached image its name addresses on a mirror that does not
    host its repository."""
    ref = parse_image(image.repository)
    return BundleImage(image.reference, ref.host, ref.name, image.tag, image.digest)


def _cached_records(
    bundle: Bundle, images: list[BundleImage]
) -> Iterator[tuple[TagKey, TagRecord]]:
    """The tag record a pull would have left for each tagged image, in the widest Accept
    class (`_records_to_write` adds the clients' own)."""
    now = time.time()
    widest = mediatypes.accept_class(KNOWN_TYPES)
    for image in images:
        if image.tag is not None:
            manifest = bundle.manifests[image.digest]
            record = TagRecord(image.digest, manifest.media_type, len(manifest.data), now)
            yield TagKey(image.upstream, image.repository, image.tag, widest), record


def _walk(bundle: Bundle, roots: list[Digest]) -> ManifestWalk:
    """The bundle's manifests walked from `roots`."""
    walk = ManifestWalk(roots)
    for edge in walk:
        if (manifest := bundle.manifests.get(edge.digest)) is not None:
            walk.visit(edge, manifest.data)
    return walk


async def _commit_records(
    data: DataDir,
    records: list[tuple[TagKey, TagRecord]],
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    """Write the tag records, except where the mirror's own record is newer."""
    now = time.time()
    for key, record in _records_to_write(records):
        # A record from a clock ahead of this one would stay fresh too long.
        record = _with_time(record, min(record.confirmed_at, now))
        existing = await data.meta.get_tag(key)
        if existing is None:
            report.records_new += 1
        elif existing.digest == record.digest and existing.confirmed_at >= record.confirmed_at:
            continue
        elif existing.confirmed_at >= record.confirmed_at:
            report.kept.append(
                f"{key.upstream}/{key.repo}:{key.tag} -> {existing.digest} (the mirror's record "
                f"is newer than the bundle's {record.digest})"
            )
            continue
        else:
            report.records_updated += 1
        if not dry_run:
            await data.meta.put_tag(key, record)


async def _commit_links(
    data: DataDir,
    bundle: Bundle,
    images: list[BundleImage],
    records: list[tuple[TagKey, TagRecord]],
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    """Link each image's (and tag record's) repository to its manifest and everything the
    bundle's manifests name from it, so the mirror serves them to that repository only."""
    roots = {(image.upstream, image.repository, image.digest) for image in images}
    roots |= {(key.upstream, key.repo, record.digest) for key, record in records}
    links: set[Link] = set()
    for upstream, repo, root in sorted(roots, key=str):
        if data.config.registries.upstream(upstream) is None:
            report.unserved.add(upstream)
        walk = _walk(bundle, [root])
        links |= {Link(upstream, repo, str(digest)) for digest in walk.reached}
    if not dry_run:
        await data.meta.add_links(sorted(links))


def _records_to_write(
    records: list[tuple[TagKey, TagRecord]],
) -> Iterator[tuple[TagKey, TagRecord]]:
    """The tag records, and for each tag one for each common client Accept class they have
    none for: the record of its widest class, where that admits its type."""
    yield from records
    by_tag: dict[tuple[str, str, str], list[tuple[TagKey, TagRecord]]] = {}
    for key, record in records:
        by_tag.setdefault((key.upstream, key.repo, key.tag), []).append((key, record))
    for (upstream, repo, tag), records in by_tag.items():
        classes = {key.accept for key, _ in records}
        _, widest = max(records, key=lambda kr: (len(kr[0].accept.split(",")), kr[1].confirmed_at))
        for types in CLIENT_ACCEPT_CLASSES:
            accept = mediatypes.accept_class(types)
            if accept not in classes and widest.media_type in types:
                yield TagKey(upstream, repo, tag, accept), widest


def _with_time(record: TagRecord, confirmed_at: float) -> TagRecord:
    return TagRecord(record.digest, record.media_type, record.size, confirmed_at)
