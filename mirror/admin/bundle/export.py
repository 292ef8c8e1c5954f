"""Export: what to write for the images asked for (every manifest and blob, found in the
store, and their tag records, or for an image of a hosted repository its hosted tag), and
writing it as a bundle."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mirror import mediatypes
from mirror.admin.bundle.layout import (
    INDEX_JSON,
    OCI_LAYOUT,
    REF_NAME,
    TAGS_JSON,
    TAGS_VERSION,
    ExportError,
    entry_name,
)
from mirror.admin.bundle.progress import Progress
from mirror.cache.graph import Edge, walk_store
from mirror.meta.store import Link, TagKey, TagRecord
from mirror.platforms import selector
from mirror.reference import Digest, ImageRef
from mirror.storage import ContentStore, StoredBlob, StoredManifest
from mirror.upstream.hosting import HOSTED, HostedRepo, Hosting
from mirror.wiring import DataDir


@dataclass(frozen=True)
class ExportedImage:
    reference: str  # docker.io/library/alpine:3.19, or ...@sha256:...; local/app:1 hosted
    upstream: str  # HOSTED for an image of a hosted repository
    repository: str
    tag: str | None
    digest: Digest
    media_type: str
    size: int


@dataclass
class ExportPlan:
    images: list[ExportedImage] = field(default_factory=list)
    records: list[tuple[TagKey, TagRecord]] = field(default_factory=list)
    manifests: dict[Digest, StoredManifest] = field(default_factory=dict)
    blobs: dict[Digest, int] = field(default_factory=dict)  # sizes
    omitted: set[Digest] = field(default_factory=set)  # index children --platform left out

    @property
    def total_bytes(self) -> int:
        return sum(len(m.data) for m in self.manifests.values()) + sum(self.blobs.values())


async def plan_export(
    data: DataDir, images: Iterable[ImageRef], platforms: Sequence[str]
) -> ExportPlan:
    """What to write for `images`: every manifest and blob, found in the store, and their
    tag records; an index's children only for `platforms` (empty: all of them). Raises
    ExportError listing everything that is not cached, and every image named by digest
    that is not linked to its repository: what the mirror would not serve as that
    repository it does not export as that repository either (a tag's record is the
    upstream's answer for its repository, and what a manifest names is held with it).
    An image of a hosted repository is exported whole (`platforms` does not apply: every
    manifest a hosted index names is held with it), from its hosted tag."""
    plan = ExportPlan()
    problems: list[str] = []
    all_tags = await data.meta.list_tags()
    hosting = Hosting(data.config.hosting.hosted)
    for image in dict.fromkeys(images):
        if (hosted := hosting.match(image.name, image.host)) is not None:
            await _plan_hosted(data, plan, hosted, image, problems)
        elif image.digest is not None:
            link = Link(image.host, image.name, str(image.digest))
            if await data.meta.has_link(link):
                await _plan_digest(data.store, plan, image, platforms, problems)
            else:
                problems.append(
                    f"{image.host}/{image.name}@{image.digest} is not known to be in"
                    f" {image.name} (pull it through the mirror from that repository first)"
                )
        else:
            await _plan_tag(data.store, plan, image, all_tags, platforms, problems)
    if problems:
        if any("platform" in p for p in problems) and not platforms:
            problems.append(
                "(to export only the platforms that are cached, name them: --platform linux/amd64)"
            )
        raise ExportError("\n".join(f"  {p}" for p in problems))
    plan.omitted -= plan.manifests.keys()
    return plan


async def _plan_digest(
    store: ContentStore,
    plan: ExportPlan,
    image: ImageRef,
    platforms: Sequence[str],
    problems: list[str],
) -> None:
    assert image.digest is not None
    reference = f"{image.host}/{image.name}@{image.digest}"
    root = await store.read_manifest(image.digest)
    if root is None:
        problems.append(f"{reference} is not in the cache")
        return
    await _plan_graph(store, plan, root.digest, reference, platforms, problems)
    _add_image(plan, image, reference, root, tag=None)


async def _plan_hosted(
    data: DataDir, plan: ExportPlan, repo: HostedRepo, image: ImageRef, problems: list[str]
) -> None:
    if image.digest is not None:
        reference, digest = f"{repo.name}@{image.digest}", image.digest
        if not await data.meta.hosted_holds(repo.name, str(digest)):
            problems.append(f"{reference} is not in hosted repository {repo.name}")
            return
    else:
        assert image.tag is not None
        reference = f"{repo.name}:{image.tag}"
        tagged = await data.meta.get_hosted_tag(repo.name, image.tag)
        if tagged is None:
            problems.append(f"{reference} is no tag of hosted repository {repo.name}")
            return
        digest = tagged.digest
    await _plan_graph(data.store, plan, digest, reference, (), problems)
    if (root := plan.manifests.get(digest)) is not None:
        hosted = ImageRef(HOSTED, repo.name, image.tag, image.digest)
        _add_image(plan, hosted, reference, root, tag=image.tag)


async def _plan_tag(
    store: ContentStore,
    plan: ExportPlan,
    image: ImageRef,
    all_tags: list[tuple[TagKey, TagRecord]],
    platforms: Sequence[str],
    problems: list[str],
) -> None:
    assert image.tag is not None
    reference = f"{image.host}/{image.name}:{image.tag}"
    records = [
        (key, record)
        for key, record in all_tags
        if (key.upstream, key.repo, key.tag) == (image.host, image.name, image.tag)
    ]
    if not records:
        problems.append(f"{reference} is not in the cache (pull it through a mirror first)")
        return
    # The record for the widest Accept class is the image (an index, usually); the
    # others name the same manifest or one of its platforms.
    records.sort(key=lambda kr: (len(kr[0].accept.split(",")), kr[1].confirmed_at))
    _, primary = records[-1]
    root_digest = primary.digest
    await _plan_graph(store, plan, root_digest, reference, platforms, problems)
    root = await store.read_manifest(root_digest)
    if root is None:
        return  # a problem already
    _add_image(plan, image, reference, root, tag=image.tag)
    for key, record in records:
        digest = record.digest
        if digest not in plan.manifests:
            if platforms:
                continue  # a platform left out
            await _plan_graph(store, plan, digest, reference, platforms, problems)
        plan.records.append((key, record))


async def _plan_graph(
    store: ContentStore,
    plan: ExportPlan,
    root: Digest,
    reference: str,
    platforms: Sequence[str],
    problems: list[str],
) -> None:
    """Add a manifest and everything it names to `plan`; note what the store lacks."""

    def missing(edge: Edge) -> None:
        what = f"the {edge.platform} platform's manifest" if edge.platform else "manifest"
        problems.append(f"{reference}: {what} {edge.digest} is not cached")

    walk, manifests = await walk_store(store, [root], selector(platforms), missing=missing)
    for digest in walk.unparseable:
        problems.append(f"{reference}: manifest {digest} cannot be parsed")
    for digest, manifest in manifests.items():
        plan.manifests.setdefault(digest, manifest)
    plan.omitted |= walk.omitted
    for blob, named_by in walk.blobs.items():
        if blob in plan.blobs:
            continue
        size = await store.blob_size(blob)
        if size is None:
            problems.append(f"{reference}: blob {blob} of manifest {named_by} is not cached")
            continue
        plan.blobs[blob] = size


def _add_image(
    plan: ExportPlan, image: ImageRef, reference: str, root: StoredManifest, tag: str | None
) -> None:
    if any(i.reference == reference for i in plan.images):
        return
    plan.images.append(
        ExportedImage(
            reference, image.host, image.name, tag, root.digest, root.media_type, len(root.data)
        )
    )


def _layout_index(plan: ExportPlan) -> bytes:
    descriptors = [
        {
            "mediaType": image.media_type,
            "digest": str(image.digest),
            "size": image.size,
            "annotations": {REF_NAME: image.reference},
        }
        for image in plan.images
    ]
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": descriptors}
    return json.dumps(index, indent=2).encode() + b"\n"


def _tags_document(plan: ExportPlan) -> bytes:
    document = {
        "version": TAGS_VERSION,
        "images": [
            {
                "reference": image.reference,
                "upstream": image.upstream,
                "repository": image.repository,
                "tag": image.tag,
                "digest": str(image.digest),
            }
            for image in plan.images
            if image.upstream != HOSTED
        ],
        # Apart from the cached images: an importer that knows nothing of hosting still
        # imports their content (index.json names them), as nothing's tag.
        "hosted": [
            {
                "reference": image.reference,
                "repository": image.repository,
                "tag": image.tag,
                "digest": str(image.digest),
            }
            for image in plan.images
            if image.upstream == HOSTED
        ],
        "tags": [
            {
                "upstream": key.upstream,
                "repository": key.repo,
                "tag": key.tag,
                "accept": key.accept,
                "digest": str(record.digest),
                "mediaType": record.media_type,
                "size": record.size,
                "confirmedAt": record.confirmed_at,
            }
            for key, record in plan.records
        ],
        "manifests": {str(d): m.media_type for d, m in plan.manifests.items()},
        "omitted": sorted(str(d) for d in plan.omitted),
    }
    return json.dumps(document, indent=2).encode() + b"\n"


async def write_bundle(
    plan: ExportPlan, store: ContentStore, output: Path, progress: Progress
) -> int:
    """Write the bundle to a temp file beside `output`, hashing every blob as it is read
    (a corrupt cache file fails the export), then rename it into place. Its size. The
    blobs are looked up first; the bundle is written in a thread."""
    blobs = [await _look_up(store, digest) for digest in plan.blobs]
    return await asyncio.to_thread(_write, plan, blobs, output, progress)


async def _look_up(store: ContentStore, digest: Digest) -> StoredBlob:
    if (blob := await store.open_blob(digest)) is None:
        raise _left_the_cache(digest)
    return blob


def _left_the_cache(digest: Digest) -> ExportError:
    return ExportError(
        f"  blob {digest} left the cache during the export (gc or eviction); try again"
    )


def _write(plan: ExportPlan, blobs: list[StoredBlob], output: Path, progress: Progress) -> int:
    partial = output.with_name(f".{output.name}.{secrets.token_hex(4)}.part")
    mtime = int(time.time())
    try:
        with partial.open("xb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode() + b"\n"
                _add_bytes(tar, OCI_LAYOUT, layout, mtime)
                _add_bytes(tar, INDEX_JSON, _layout_index(plan), mtime)
                _add_bytes(tar, TAGS_JSON, _tags_document(plan), mtime)
                for digest, manifest in plan.manifests.items():
                    _add_bytes(tar, entry_name(digest), manifest.data, mtime)
                    progress.done(f"manifest {digest}", len(manifest.data))
                for blob in blobs:
                    _add_blob(tar, blob, mtime, progress)
            fh.flush()
            os.fsync(fh.fileno())
        partial.rename(output)
        return output.stat().st_size
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        progress.finish()


def _tar_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    tar.addfile(_tar_info(name, len(data), mtime), io.BytesIO(data))


def _add_blob(tar: tarfile.TarFile, blob: StoredBlob, mtime: int, progress: Progress) -> None:
    digest = blob.digest
    try:
        source = blob.open()
    except FileNotFoundError:
        raise _left_the_cache(digest) from None
    with source:
        size = os.fstat(source.fileno()).st_size
        reader = _HashingReader(source, digest, progress)
        tar.addfile(_tar_info(entry_name(digest), size, mtime), reader)
    if reader.hash.hexdigest() != digest.hex:
        raise ExportError(
            f"  blob {digest} in the cache is corrupt (it hashes to "
            f"{digest.algorithm}:{reader.hash.hexdigest()}); remove it and pull the image again"
        )
    progress.done(f"blob {digest}", 0)


class _HashingReader:
    """A file as tarfile reads it, hashed (and counted for progress) on the way."""

    def __init__(self, source: IO[bytes], digest: Digest, progress: Progress) -> None:
        self._source = source
        self.hash = hashlib.new(digest.algorithm)
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hash.update(data)
        self._progress.advance(len(data))
        return data
