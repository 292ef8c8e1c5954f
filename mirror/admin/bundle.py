"""`mirror export` and `mirror import`: carrying cached images to an air-gapped mirror.

`mirror export IMAGE... -o bundle.tar` writes what the cache holds for the images (their
manifests, configs and layers, every platform of an index unless `--platform` says which)
as an OCI image layout in a tar, plus the mirror's tag records. `mirror import bundle.tar`
reads it on the other side, entry by entry, into temp files under the data dir's `tmp/`,
hashing each; only when every entry matches its digest and everything the bundle names is
in it does anything go into the store. A bad bundle leaves the cache as it was.

The bundle (a plain tar, entries in this order):

    oci-layout          {"imageLayoutVersion": "1.0.0"}
    index.json          an OCI index with one descriptor per exported image, its
                        `org.opencontainers.image.ref.name` the full reference
                        (`docker.io/library/alpine:3.19`)
    mirror/tags.json    what the mirror needs besides content (see `TAGS_VERSION`): the
                        images, their tag records for every Accept class the exporting
                        mirror had, the media type of every manifest, and the index
                        children `--platform` left out
    blobs/<alg>/<hex>   every manifest, config and layer, once

Both commands work on a data dir whether or not a server runs on it: export only reads
files that never change once written, and import publishes content the way the server
does (verified temp file, then rename) before it writes any tag record.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
import secrets
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from mirror import mediatypes
from mirror.admin.context import DataDir, open_data_dir
from mirror.units import human_size
from mirror.cache.references import references
from mirror.cache.store import FilesystemStore, StoredManifest
from mirror.config import Config
from mirror.errors import RegistryError
from mirror.reference import (
    Digest,
    ImageRef,
    is_registry_host,
    parse_image,
    parse_name,
    parse_tag,
)

if TYPE_CHECKING:
    from mirror.meta.store import TagKey, TagRecord

OCI_LAYOUT = "oci-layout"
INDEX_JSON = "index.json"
TAGS_JSON = "mirror/tags.json"
TAGS_VERSION = 1
REF_NAME = "org.opencontainers.image.ref.name"
# The largest metadata file (index.json, tags.json) and manifest an import reads into memory.
MAX_METADATA_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK = 1024 * 1024
# Directory entries a bundle may have (tar tools add them; export writes none).
_DIRECTORIES = re.compile(r"blobs(/[a-z0-9]+)?|mirror")
_BLOB_ENTRY = re.compile(r"blobs/(?P<algorithm>[^/]+)/(?P<hex>[^/]+)")
_INDEX_TYPES = frozenset({mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST})
_KNOWN_TYPES = frozenset(
    {*mediatypes.MANIFEST_TYPES, mediatypes.DOCKER_SCHEMA1, mediatypes.DOCKER_SCHEMA1_SIGNED}
)

# Tag records are kept per Accept class (the same tag names an index for one client and a
# single manifest for another), and an offline mirror answers only classes it has a record
# for. Import also writes, for each tag, a record for these classes when the bundle has
# none: what skopeo and podman (every type), containerd (`*/*`: the modern four) and the
# Docker Engine (the modern four, with or without signed schema 1) send.
CLIENT_ACCEPT_CLASSES: tuple[frozenset[str], ...] = (
    frozenset(mediatypes.MANIFEST_TYPES),
    frozenset({*mediatypes.MANIFEST_TYPES, mediatypes.DOCKER_SCHEMA1_SIGNED}),
    frozenset(_KNOWN_TYPES),
)


class BundleError(Exception):
    """A bundle that cannot be imported; `entry` names the tar entry at fault, if one is."""

    def __init__(self, entry: str | None, message: str) -> None:
        super().__init__(f"{entry}: {message}" if entry else message)
        self.entry = entry


class ExportError(Exception):
    """What keeps an export from writing a complete bundle (one problem a line)."""


# --- the command line ----------------------------------------------------------------------


def add_parsers(commands: Any) -> list[argparse.ArgumentParser]:
    export: argparse.ArgumentParser = commands.add_parser(
        "export", help="write cached images to a bundle (an OCI layout tar) for another mirror"
    )
    export.add_argument("images", nargs="+", metavar="IMAGE", help="e.g. alpine:3.19")
    export.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="the bundle to write"
    )
    export.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="only these platforms of multi-platform images (repeatable; default: all)",
    )
    export.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    export.set_defaults(run=run_export)

    imp: argparse.ArgumentParser = commands.add_parser(
        "import", help="verify a bundle from `mirror export` and add its images to the cache"
    )
    imp.add_argument("bundle", metavar="FILE", help="the bundle (- reads standard input)")
    imp.add_argument(
        "--dry-run", action="store_true", help="verify the bundle and report; change nothing"
    )
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    imp.set_defaults(run=run_import)
    return [export, imp]


def run_export(args: argparse.Namespace, config: Config) -> int:
    try:
        images = [parse_image(text) for text in args.images]
        platforms = [_parse_platform(text) for text in args.platform]
    except (RegistryError, ValueError) as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2

    from mirror.meta.store import MetaStoreError

    async def plan() -> ExportPlan:
        async with open_data_dir(config) as data:
            return await plan_export(data, images, platforms)

    try:
        exported = asyncio.run(plan())
        if not args.quiet:
            for image in exported.images:
                print(f"exporting {image.reference} ({image.digest})", file=sys.stderr)
        progress = Progress("exporting", exported.total_bytes, quiet=args.quiet)
        store = FilesystemStore(config.data_dir)
        written = write_bundle(exported, store, args.output, progress)
    except ExportError as exc:
        print(f"mirror: cannot export:\n{exc}", file=sys.stderr)
        return 1
    except MetaStoreError as exc:
        print(f"mirror: cannot read the metadata store: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mirror: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output}: {_count(len(exported.images), 'image')}, "
        f"{_count(len(exported.manifests) + len(exported.blobs), 'object')} "
        f"({_count(len(exported.manifests), 'manifest')}, {_count(len(exported.blobs), 'blob')}), "
        f"{_count(len(exported.records), 'tag record')}, {human_size(written)}"
    )
    return 0


def run_import(args: argparse.Namespace, config: Config) -> int:
    source = "standard input" if args.bundle == "-" else args.bundle
    store = FilesystemStore(config.data_dir)
    try:
        if args.bundle == "-":
            progress = Progress("verifying", None, quiet=args.quiet)
            bundle = read_bundle(sys.stdin.buffer, store.tmp, progress)
        else:
            path = Path(args.bundle)
            with path.open("rb") as fh:
                progress = Progress("verifying", path.stat().st_size, quiet=args.quiet)
                bundle = read_bundle(fh, store.tmp, progress)
    except BundleError as exc:
        print(f"mirror: {source} refused, nothing was imported: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mirror: cannot read {source}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    from mirror.meta.store import MetaStoreError

    async def commit() -> ImportReport:
        async with open_data_dir(config) as data:
            report = await import_bundle(data, bundle, dry_run=args.dry_run)
            # The store answers "not known" rather than fail while its backend is down:
            # a write it dropped must fail the import, not pass unseen.
            if getattr(data.meta, "errors", 0):
                raise MetaStoreError("it failed while the tag records were written")
            return report

    try:
        report = asyncio.run(commit())
    except (OSError, MetaStoreError) as exc:
        print(
            f"mirror: import of {source} failed: {exc}; the content that was verified may be "
            "in the cache; import the bundle again",
            file=sys.stderr,
        )
        return 1
    finally:
        bundle.discard()
    for host in sorted(report.unserved):
        print(
            f"note: {host} is not a registry this mirror serves; add an [[upstream]] for it "
            "to serve its images",
            file=sys.stderr,
        )
    for line in report.kept:
        print(f"kept {line}", file=sys.stderr)
    print(report.summary(source, dry_run=args.dry_run))
    return 0


# --- export --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedImage:
    reference: str  # docker.io/library/alpine:3.19, or ...@sha256:...
    upstream: str
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
    data: DataDir, images: Iterable[ImageRef], platforms: list[tuple[str, ...]]
) -> ExportPlan:
    """What to write for `images`: every manifest and blob, found in the store, and their
    tag records. Raises ExportError listing everything that is not cached."""
    plan = ExportPlan()
    problems: list[str] = []
    all_tags = await data.meta.list_tags()
    for image in dict.fromkeys(images):
        if image.digest is not None:
            reference = f"{image.host}/{image.name}@{image.digest}"
            root = data.store.read_manifest(image.digest)
            if root is None:
                problems.append(f"{reference} is not in the cache")
                continue
            _walk(data.store, plan, root.digest, reference, platforms, problems)
            _add_image(plan, image, reference, root, tag=None)
            continue
        assert image.tag is not None
        reference = f"{image.host}/{image.name}:{image.tag}"
        records = [
            (key, record)
            for key, record in all_tags
            if (key.upstream, key.repo, key.tag) == (image.host, image.name, image.tag)
        ]
        if not records:
            problems.append(f"{reference} is not in the cache (pull it through a mirror first)")
            continue
        # The record for the widest Accept class is the image (an index, usually); the
        # others name the same manifest or one of its platforms.
        records.sort(key=lambda kr: (len(kr[0].accept.split(",")), kr[1].confirmed_at))
        _, primary = records[-1]
        root_digest = Digest.parse(primary.digest)
        _walk(data.store, plan, root_digest, reference, platforms, problems)
        root = data.store.read_manifest(root_digest)
        if root is None:
            continue  # a problem already
        _add_image(plan, image, reference, root, tag=image.tag)
        for key, record in records:
            digest = Digest.parse(record.digest)
            if digest not in plan.manifests:
                if platforms:
                    continue  # a platform left out
                _walk(data.store, plan, digest, reference, platforms, problems)
            plan.records.append((key, record))
    if problems:
        if any("platform" in p for p in problems) and not platforms:
            problems.append(
                "(to export only the platforms that are cached, name them: --platform linux/amd64)"
            )
        raise ExportError("\n".join(f"  {p}" for p in problems))
    plan.omitted -= plan.manifests.keys()
    return plan


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


def _walk(
    store: FilesystemStore,
    plan: ExportPlan,
    root: Digest,
    reference: str,
    platforms: list[tuple[str, ...]],
    problems: list[str],
) -> None:
    """Add a manifest and everything it names to `plan`; note what the store lacks."""
    pending: list[tuple[Digest, str | None]] = [(root, None)]
    while pending:
        digest, platform = pending.pop()
        if digest in plan.manifests:
            continue
        manifest = store.read_manifest(digest)
        if manifest is None:
            what = f"the {platform} platform's manifest" if platform else "manifest"
            problems.append(f"{reference}: {what} {digest} is not cached")
            continue
        plan.manifests[digest] = manifest
        refs = references(manifest.data)
        for child, child_platform, _ in reversed(refs.manifests):
            if platforms and not _platform_wanted(child_platform, platforms):
                plan.omitted.add(child)
                continue
            pending.append((child, child_platform))
        for blob in refs.blobs:
            if blob in plan.blobs:
                continue
            size = store.blob_size(blob)
            if size is None:
                problems.append(f"{reference}: blob {blob} of manifest {digest} is not cached")
                continue
            plan.blobs[blob] = size


def _parse_platform(text: str) -> tuple[str, ...]:
    parts = tuple(text.strip().lower().split("/"))
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", p) for p in parts):
        raise ValueError(f"--platform {text}: expected OS/ARCH or OS/ARCH/VARIANT")
    return parts


def _platform_wanted(platform: str | None, wanted: list[tuple[str, ...]]) -> bool:
    """Whether an index child is for one of the wanted platforms: OS and architecture
    equal, and the variant too when both say one. A child that names no platform is kept."""
    if platform is None:
        return True
    have = tuple(platform.lower().split("/"))
    for want in wanted:
        if have[:2] != want[:2]:
            continue
        if len(want) < 3 or len(have) < 3 or have[2] == want[2]:
            return True
    return False


def _entry(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


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
        ],
        "tags": [
            {
                "upstream": key.upstream,
                "repository": key.repo,
                "tag": key.tag,
                "accept": key.accept,
                "digest": record.digest,
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


def write_bundle(plan: ExportPlan, store: FilesystemStore, output: Path, progress: Progress) -> int:
    """Write the bundle to a temp file beside `output`, hashing every blob as it is read
    (a corrupt cache file fails the export), then rename it into place. Its size."""
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
                    _add_bytes(tar, _entry(digest), manifest.data, mtime)
                    progress.done(f"manifest {digest}", len(manifest.data))
                for digest, size in plan.blobs.items():
                    _add_blob(tar, store, digest, size, mtime, progress)
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


def _add_blob(
    tar: tarfile.TarFile,
    store: FilesystemStore,
    digest: Digest,
    size: int,
    mtime: int,
    progress: Progress,
) -> None:
    try:
        source = store.blob_path(digest).open("rb")
    except FileNotFoundError:
        raise ExportError(
            f"  blob {digest} left the cache during the export (gc or eviction); try again"
        ) from None
    with source:
        size = os.fstat(source.fileno()).st_size
        reader = _HashingReader(source, digest, progress)
        tar.addfile(_tar_info(_entry(digest), size, mtime), reader)
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


# --- import: reading and verifying -----------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """One verified blob or manifest in a temp file."""

    path: Path
    size: int


@dataclass(frozen=True)
class BundleImage:
    reference: str
    upstream: str
    repository: str
    tag: str | None
    digest: Digest


@dataclass
class Bundle:
    """A verified bundle, its content in temp files until committed or discarded."""

    staged: dict[Digest, Staged] = field(default_factory=dict)
    images: list[BundleImage] = field(default_factory=list)
    records: list[tuple[TagKey, TagRecord]] = field(default_factory=list)
    manifests: dict[Digest, str] = field(default_factory=dict)  # media types, children first
    blobs: list[Digest] = field(default_factory=list)
    unreferenced: int = 0  # entries nothing names (not imported)
    size: int = 0  # bytes of content

    def discard(self) -> None:
        """Remove the temp files that were not committed."""
        for staged in self.staged.values():
            staged.path.unlink(missing_ok=True)


def read_bundle(source: IO[bytes], tmp: Path, progress: Progress) -> Bundle:
    """Read a bundle from a stream: every blob entry into a temp file in `tmp` while it is
    hashed, then check that everything index.json and tags.json name is there. Raises
    BundleError naming the bad entry, with every temp file removed."""
    bundle = Bundle()
    try:
        metadata = _stage_entries(_CountingReader(source, progress), tmp, bundle, progress)
        _check(bundle, metadata)
    except BaseException:
        bundle.discard()
        raise
    finally:
        progress.finish()
    return bundle


def _stage_entries(
    source: _CountingReader, tmp: Path, bundle: Bundle, progress: Progress
) -> dict[str, bytes]:
    metadata: dict[str, bytes] = {}
    entry: str | None = None  # the last entry seen
    reading = False  # in the middle of its data
    token = secrets.token_hex(6)
    try:
        # A stream (standard input works): entries are read once, in order, nothing seeks.
        with tarfile.open(fileobj=cast(IO[bytes], source), mode="r|*") as tar:
            for member in tar:
                entry, reading = member.name, False
                name = _entry_name(member.name)
                entry = name
                if member.isdir():
                    if not _DIRECTORIES.fullmatch(name):
                        raise BundleError(name, "unexpected directory in a bundle")
                    continue
                if not member.isreg() or member.issparse():
                    kind = "a link" if member.issym() or member.islnk() else "not a regular file"
                    raise BundleError(name, f"is {kind}; a bundle holds regular files only")
                reader = tar.extractfile(member)
                assert reader is not None
                reading = True
                if name in (OCI_LAYOUT, INDEX_JSON, TAGS_JSON):
                    if name in metadata:
                        raise BundleError(name, "appears twice")
                    if member.size > MAX_METADATA_BYTES:
                        raise BundleError(name, f"is too large ({human_size(member.size)})")
                    data = reader.read(member.size)
                    if len(data) != member.size:
                        raise BundleError(name, _truncated(len(data), member.size))
                    metadata[name] = data
                    reading = False
                    continue
                match = _BLOB_ENTRY.fullmatch(name)
                if match is None:
                    raise BundleError(name, "unexpected entry (not part of an OCI image layout)")
                try:
                    digest = Digest.parse(f"{match['algorithm']}:{match['hex']}")
                except RegistryError as exc:
                    raise BundleError(name, f"not named by a digest: {exc}") from None
                if digest in bundle.staged:
                    raise BundleError(name, "appears twice")
                target = tmp / f"import-{token}-{digest.algorithm}-{digest.hex}.part"
                size = _stage(reader, target, digest, member.size, name)
                bundle.staged[digest] = Staged(target, size)
                reading = False
                progress.done(name, 0)
    except (tarfile.TarError, EOFError) as exc:
        if reading:
            message = f"truncated: the archive ends in the middle of it ({exc})"
            raise BundleError(entry, message) from None
        where = f"after {entry}" if entry else "at its start"
        raise BundleError(None, f"not a readable tar archive ({where}): {exc}") from None
    return metadata


class _CountingReader:
    """The bundle as tarfile reads it, counted for progress (archive bytes, so a bundle's
    file size is the total)."""

    def __init__(self, source: IO[bytes], progress: Progress) -> None:
        self._source = source
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._progress.advance(len(data))
        return data


def _entry_name(raw: str) -> str:
    """A member's name, refused unless it is a plain relative path (`./` allowed)."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    parts = name.split("/")
    if (
        not name
        or raw.startswith("/")
        or "\\" in name
        or "\0" in name
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise BundleError(raw or "(empty name)", "unsafe path in a bundle (absolute or with ..)")
    return name


def _truncated(got: int, expected: int) -> str:
    return f"truncated: {got} of {expected} bytes (the archive ends early)"


def _stage(reader: IO[bytes], target: Path, digest: Digest, size: int, name: str) -> int:
    """Copy one entry to `target`, hashing it; the file is removed unless it verifies."""
    hasher = hashlib.new(digest.algorithm)
    written = 0
    try:
        with target.open("xb") as out:
            while written < size:
                chunk = reader.read(min(CHUNK, size - written))
                if not chunk:
                    break
                out.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
            if written != size:
                raise BundleError(name, _truncated(written, size))
            if hasher.hexdigest() != digest.hex:
                raise BundleError(
                    name,
                    f"corrupt: its content hashes to {digest.algorithm}:{hasher.hexdigest()}, "
                    "not to its name",
                )
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return written


def _json_object(name: str, data: bytes | None, what: str) -> dict[str, Any]:
    if data is None:
        raise BundleError(None, f"no {name}: {what}")
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise BundleError(name, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BundleError(name, "not a JSON object")
    return document


def _check(bundle: Bundle, metadata: dict[str, bytes]) -> None:
    """Everything index.json and tags.json name is in the bundle and consistent."""
    layout = _json_object(OCI_LAYOUT, metadata.get(OCI_LAYOUT), "not an OCI image layout")
    if not isinstance(layout.get("imageLayoutVersion"), str):
        raise BundleError(OCI_LAYOUT, "no imageLayoutVersion")
    index = _json_object(INDEX_JSON, metadata.get(INDEX_JSON), "not an OCI image layout")
    tags = _json_object(
        TAGS_JSON, metadata.get(TAGS_JSON), "not a mirror bundle (make one with mirror export)"
    )
    if tags.get("version") != TAGS_VERSION:
        raise BundleError(TAGS_JSON, f"version {tags.get('version')!r} is not {TAGS_VERSION}")

    media_types: dict[Digest, str] = {}  # what the descriptors and tags.json say
    listed = _field(tags, "manifests", dict, TAGS_JSON)
    for text, media_type in listed.items():
        if not isinstance(media_type, str):
            raise BundleError(TAGS_JSON, f"manifests: {text}: media type is not a string")
        media_types[_digest(text, TAGS_JSON)] = media_type
    omitted = {_digest(t, TAGS_JSON) for t in _field(tags, "omitted", list, TAGS_JSON)}

    roots: list[tuple[Digest, str]] = []
    for descriptor in _field(index, "manifests", list, INDEX_JSON):
        if not isinstance(descriptor, dict):
            raise BundleError(INDEX_JSON, "a descriptor is not a JSON object")
        digest = _digest(descriptor.get("digest"), INDEX_JSON)
        if digest not in bundle.staged:
            raise BundleError(INDEX_JSON, f"names {digest}, which is not in the bundle")
        if descriptor.get("size") != bundle.staged[digest].size:
            raise BundleError(
                INDEX_JSON, f"says {digest} is {descriptor.get('size')} bytes; it is not"
            )
        if isinstance(descriptor.get("mediaType"), str):
            media_types.setdefault(digest, descriptor["mediaType"])
        roots.append((digest, INDEX_JSON))

    for item in _field(tags, "images", list, TAGS_JSON):
        image = _image(item)
        if (image.digest, INDEX_JSON) not in roots:
            raise BundleError(TAGS_JSON, f"image {image.reference} is not in index.json")
        bundle.images.append(image)
    for item in _field(tags, "tags", list, TAGS_JSON):
        key, record = _record(item)
        media_types.setdefault(Digest.parse(record.digest), record.media_type)
        roots.append((Digest.parse(record.digest), TAGS_JSON))
        bundle.records.append((key, record))

    _walk_bundle(bundle, roots, media_types, omitted)
    for key, record in bundle.records:
        digest = Digest.parse(record.digest)
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
    used = set(bundle.manifests) | set(bundle.blobs)
    for digest in [d for d in bundle.staged if d not in used]:
        bundle.staged.pop(digest).path.unlink(missing_ok=True)
        bundle.unreferenced += 1
    bundle.size = sum(s.size for s in bundle.staged.values())


def _walk_bundle(
    bundle: Bundle,
    roots: list[tuple[Digest, str]],
    media_types: dict[Digest, str],
    omitted: set[Digest],
) -> None:
    """Read every manifest reachable from the roots (which must be there, except index
    children export left out); note them children first, and the blobs they name."""
    order: list[Digest] = []
    seen: set[Digest] = set()
    blobs: dict[Digest, None] = {}
    # Depth first, a manifest noted after its children: (digest, who names it, expanded).
    pending = [(digest, named_by, False) for digest, named_by in reversed(roots)]
    while pending:
        digest, named_by, expanded = pending.pop()
        if expanded:
            order.append(digest)
            continue
        if digest in seen:
            continue
        seen.add(digest)
        staged = bundle.staged.get(digest)
        if staged is None:
            if digest in omitted:
                continue
            raise BundleError(_entry(digest), f"named by {named_by}, but not in the bundle")
        if staged.size > MAX_MANIFEST_BYTES:
            raise BundleError(_entry(digest), "a manifest larger than 4 MiB")
        data = staged.path.read_bytes()
        try:
            document = json.loads(data)
        except ValueError:
            message = f"named by {named_by} as a manifest, but not JSON"
            raise BundleError(_entry(digest), message) from None
        if not isinstance(document, dict):
            raise BundleError(_entry(digest), "a manifest that is not a JSON object")
        if isinstance(document.get("mediaType"), str):
            media_types.setdefault(digest, document["mediaType"])
        if digest not in media_types:
            raise BundleError(_entry(digest), "a manifest without a media type")
        pending.append((digest, named_by, True))
        refs = references(data)
        descriptors = document.get("manifests")
        child_types = {
            d.get("digest"): d.get("mediaType")
            for d in (descriptors if isinstance(descriptors, list) else [])
            if isinstance(d, dict) and isinstance(d.get("mediaType"), str)
        }
        for child, _, _ in reversed(refs.manifests):
            if isinstance(child_type := child_types.get(str(child)), str):
                media_types.setdefault(child, child_type)
            pending.append((child, f"manifest {digest}", False))
        for blob in refs.blobs:
            if blob not in bundle.staged:
                raise BundleError(
                    _entry(blob), f"named by manifest {digest}, but not in the bundle"
                )
            blobs[blob] = None
    bundle.manifests = {digest: media_types[digest] for digest in order}
    bundle.blobs = [b for b in blobs if b not in bundle.manifests]


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


def _record(item: Any) -> tuple[TagKey, TagRecord]:
    from mirror.meta.store import TagKey, TagRecord

    if not isinstance(item, dict):
        raise BundleError(TAGS_JSON, "a tag record is not a JSON object")
    try:
        upstream, repository = _repository(item)
        tag = parse_tag(_str(item, "tag"))
        accept = _str(item, "accept")
        types = frozenset(accept.split(","))
        if not types <= _KNOWN_TYPES or mediatypes.accept_class(types) != accept:
            raise BundleError(None, f"accept {accept!r} is not an Accept class")
        size, confirmed = item.get("size"), item.get("confirmedAt")
        if not isinstance(size, int) or not isinstance(confirmed, int | float):
            raise BundleError(None, "size and confirmedAt must be numbers")
        digest = _digest(item.get("digest"), "")
        return TagKey(upstream, repository, tag, accept), TagRecord(
            str(digest), _str(item, "mediaType"), size, float(confirmed)
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


# --- import: committing ---------------------------------------------------------------------


@dataclass
class ImportReport:
    images: int = 0
    objects: int = 0
    new_objects: int = 0
    bytes: int = 0
    new_bytes: int = 0
    records_new: int = 0
    records_updated: int = 0
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
        records = f"{_count(self.records_new, 'tag record')} new, {self.records_updated} updated"
        extra = f"; {self.unreferenced} entries nothing names skipped" if self.unreferenced else ""
        return (
            f"{verb} {source}: {_count(self.images, 'image')}, {_count(self.objects, 'object')} "
            f"({human_size(self.bytes)}), {new}; {records}{extra}"
        )


async def import_bundle(data: DataDir, bundle: Bundle, *, dry_run: bool = False) -> ImportReport:
    """Put a verified bundle's content into the store (blobs, then manifests children
    first, so whatever a server sees is complete), then its tag records and catalog
    entries. Content the store has is skipped; a tag record the mirror holds newer than the
    bundle's stays."""
    store = data.store
    report = ImportReport(
        images=len(bundle.images),
        objects=len(bundle.staged),
        bytes=bundle.size,
        unreferenced=bundle.unreferenced,
    )
    for digest in bundle.blobs:
        staged = bundle.staged[digest]
        if store.blob_size(digest) is not None:
            continue
        report.new_objects += 1
        report.new_bytes += staged.size
        if not dry_run:
            target = store.blob_path(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            staged.path.rename(target)
            store.count("blob", staged.size)
    for digest, media_type in bundle.manifests.items():
        staged = bundle.staged[digest]
        if store.has_manifest(digest):
            continue
        report.new_objects += 1
        report.new_bytes += staged.size
        if not dry_run:
            data_bytes = staged.path.read_bytes()
            await store.write_manifest(StoredManifest(data_bytes, media_type, digest))

    now = time.time()
    for key, record in _records_to_write(bundle):
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

    repositories: dict[str, set[str]] = {}
    for image in bundle.images:
        repositories.setdefault(image.upstream, set()).add(image.repository)
    for key, _ in bundle.records:
        repositories.setdefault(key.upstream, set()).add(key.repo)
    for upstream, repos in repositories.items():
        if data.config.upstream(upstream) is None:
            report.unserved.add(upstream)
        if not dry_run:
            await data.meta.add_repositories(upstream, sorted(repos))
    return report


def _records_to_write(bundle: Bundle) -> Iterator[tuple[TagKey, TagRecord]]:
    """The bundle's tag records, and for each tag one for each common client Accept class
    the bundle has none for: the record of its widest class, where that admits its type."""
    from mirror.meta.store import TagKey

    yield from bundle.records
    by_tag: dict[tuple[str, str, str], list[tuple[TagKey, TagRecord]]] = {}
    for key, record in bundle.records:
        by_tag.setdefault((key.upstream, key.repo, key.tag), []).append((key, record))
    for (upstream, repo, tag), records in by_tag.items():
        classes = {key.accept for key, _ in records}
        _, widest = max(records, key=lambda kr: (len(kr[0].accept.split(",")), kr[1].confirmed_at))
        for types in CLIENT_ACCEPT_CLASSES:
            accept = mediatypes.accept_class(types)
            if accept not in classes and widest.media_type in types:
                yield TagKey(upstream, repo, tag, accept), widest


def _with_time(record: TagRecord, confirmed_at: float) -> TagRecord:
    from mirror.meta.store import TagRecord

    return TagRecord(record.digest, record.media_type, record.size, confirmed_at)


# --- progress -------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


class Progress:
    """Progress on stderr: one line redrawn on a terminal, a line per object otherwise."""

    def __init__(
        self, verb: str, total: int | None, *, quiet: bool = False, stream: IO[str] | None = None
    ) -> None:
        self._verb = verb
        self._total = total
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._tty = self._stream.isatty()
        self._bytes = 0
        self._objects = 0
        self._drawn = 0.0
        self._started = time.monotonic()

    def advance(self, size: int) -> None:
        self._bytes += size
        if self._tty and not self._quiet and time.monotonic() - self._drawn > 0.1:
            self._draw()

    def done(self, what: str, size: int) -> None:
        """One object finished (`size` more bytes, if not counted with `advance`)."""
        self._objects += 1
        self.advance(size)
        if not self._tty and not self._quiet:
            print(f"{self._verb} {what}", file=self._stream)

    def finish(self) -> None:
        if self._quiet:
            return
        if self._tty:
            self._draw()
            print(file=self._stream)
        seconds = time.monotonic() - self._started
        rate = human_size(self._bytes / seconds) + "/s" if seconds > 0 else ""
        print(
            f"{self._verb}: {_count(self._objects, 'object')}, {human_size(self._bytes)} "
            f"in {seconds:.1f} s ({rate})",
            file=self._stream,
        )
        self._quiet = True  # once

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        done = human_size(self._bytes)
        if self._total:
            share = min(100, 100 * self._bytes // self._total)
            done = f"{done} of {human_size(self._total)} ({share}%)"
        objects = _count(self._objects, "object")
        self._stream.write(f"\r{self._verb}: {objects}, {done}\033[K")
        self._stream.flush()
