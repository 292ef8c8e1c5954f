"""The filesystem content store: blobs and manifests under one data directory.

Nothing becomes visible here unless its digest was verified: bytes go to a temp file under
`<data_dir>/tmp/` while they are hashed, are fsynced, and only then renamed into place. A
crash leaves at most a temp file, which a later start (a dead download's at once, any other
once it is `TEMP_GRACE_SECONDS` old and no writer holds it) or gc removes. Manifests are
kept as the exact upstream bytes, with their media type beside them. Only this module knows
the layout:

    blobs/<algorithm>/<first two hex>/<hex>
    manifests/<algorithm>/<first two hex>/<hex>        the exact bytes
    manifests/<algorithm>/<first two hex>/<hex>.type   their media type
    tmp/                                               in-progress writes
    tmp/<algorithm>-<hex>.{lock,download,size}         a claimed download (filespool)
    uploads/<id>                                       a push's bytes so far (fileuploads)
    usage                                              what it holds, counted (usage)
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage.filespool import SPOOL_SUFFIXES, FileSpool
from mirror.storage.fileuploads import FileUploadSpool
from mirror.storage.filewriter import FileBlobWriter, held, sync_directory
from mirror.storage.protocol import (
    ContentKind,
    IntegrityError,
    StoredManifest,
    StoredObject,
    TempFile,
    Usage,
)
from mirror.storage.recent import RecentManifests
from mirror.storage.usage import SharedUsage

# Memory for recently read manifests (a typical one is a few KB).
READ_CHUNK_BYTES = 1024 * 1024
# A temp file no writer holds may still be a verified write waiting for its commit (an
# import verifies a whole bundle before it commits any of it): it is left alone this long.
TEMP_GRACE_SECONDS = 6 * 3600


@dataclass(frozen=True)
class FileBlob:
    """A `StoredBlob` that is a file of the data dir."""

    digest: Digest
    size: int
    path: Path

    @property
    def local_path(self) -> Path:
        return self.path

    def open(self) -> BinaryIO:
        return self.path.open("rb")

    async def chunks(self, start: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        stop = self.size if end is None else end
        with await asyncio.to_thread(self.open) as fh:
            fd = fh.fileno()
            while start < stop:
                data = await asyncio.to_thread(
                    os.pread, fd, min(stop - start, READ_CHUNK_BYTES), start
                )
                if not data:
                    raise OSError(f"{self.path} is shorter than {stop} bytes")
                start += len(data)
                yield data


class FilesystemStore:
    """A `ContentStore` in one data directory."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._tmp = root / "tmp"
        for sub in ("blobs", "manifests", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._recent = RecentManifests()
        self._uploads = FileUploadSpool(root)
        # What the store holds: measured by `measure()` (a walk of the tree, at start and
        # now and then), kept current in between by every process counting its commits.
        self._usage = SharedUsage(root / "usage")

    @property
    def location(self) -> str:
        return str(self._root)

    @property
    def usage(self) -> dict[ContentKind, Usage]:
        return self._usage.read()

    @property
    def tmp_dir(self) -> Path:
        """Where writes in progress live (a store built on this one spools there too)."""
        return self._tmp

    def _count(self, kind: ContentKind, size: int) -> None:
        """Note a newly committed object in `usage`."""
        self._usage.add(kind, 1, size)

    def _count_blob(self, size: int, is_new: bool) -> None:
        if is_new:
            self._count("blob", size)

    # --- blobs ----------------------------------------------------------------------------

    def _blob_path(self, digest: Digest) -> Path:
        return self._root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex

    async def blob_size(self, digest: Digest) -> int | None:
        blob = self.blob_file(digest)
        return None if blob is None else blob.size

    async def open_blob(self, digest: Digest) -> FileBlob | None:
        return self.blob_file(digest)

    def blob_file(self, digest: Digest) -> FileBlob | None:
        """The committed blob's file, or None. One stat: cheap enough for the event loop
        (the async lookups) and for blocking callers alike."""
        path = self._blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return FileBlob(digest, size, path)

    def blob_writer(self, digest: Digest) -> FileBlobWriter:
        """A private temp file, published only by `commit` after it is verified."""
        return FileBlobWriter(
            self._temp_path(digest), self._blob_path(digest), digest, on_commit=self._count_blob
        )

    def spool(self, digest: Digest) -> FileSpool:
        final = self._blob_path(digest)
        return FileSpool(digest, self._spool_stem(digest), final, self._count_blob)

    @property
    def uploads(self) -> FileUploadSpool:
        return self._uploads

    def _spool_stem(self, digest: Digest) -> Path:
        return self._tmp / f"{digest.algorithm}-{digest.hex}"

    def _spool_of(self, path: Path) -> Digest | None:
        """The digest whose spool `path` (a file in `tmp/`) belongs to, or None for any
        other temp file."""
        stem, dot, suffix = path.name.rpartition(".")
        algorithm, dash, hex_digest = stem.partition("-")
        if not dot or not dash or suffix not in SPOOL_SUFFIXES:
            return None
        try:
            return Digest.parse(f"{algorithm}:{hex_digest}")
        except RegistryError:
            return None

    # --- manifests ------------------------------------------------------------------------

    def _manifest_path(self, digest: Digest) -> Path:
        return self._root / "manifests" / digest.algorithm / digest.hex[:2] / digest.hex

    async def has_manifest(self, digest: Digest) -> bool:
        return self._manifest_path(digest).is_file()

    def recent_manifest(self, digest: Digest) -> StoredManifest | None:
        return self._recent.get(digest)

    async def read_manifest(self, digest: Digest) -> StoredManifest | None:
        """The manifest, from memory when it was read recently (they are immutable, and the
        same few are read over and over), else from disk (two small files: read in place,
        as a thread would cost more than the read)."""
        if (manifest := self._recent.get(digest)) is not None:
            return manifest
        path = self._manifest_path(digest)
        try:
            data = path.read_bytes()
            media_type = path.with_name(path.name + ".type").read_text().strip()
        except FileNotFoundError:
            return None
        manifest = StoredManifest(data=data, media_type=media_type, digest=digest)
        self._recent.keep(manifest)
        return manifest

    async def write_manifest(self, manifest: StoredManifest) -> None:
        """The media type is written first, so a visible manifest always has its type. A
        manifest already stored keeps the type it was stored with."""
        digest = manifest.digest
        actual = hashlib.new(digest.algorithm, manifest.data).hexdigest()
        if actual != digest.hex:
            raise IntegrityError(f"manifest hashes to {digest.algorithm}:{actual}")
        path = self._manifest_path(digest)
        if path.is_file():
            return
        await asyncio.to_thread(
            self._publish, path.with_name(path.name + ".type"), manifest.media_type.encode(), digest
        )
        await asyncio.to_thread(self._publish, path, manifest.data, digest)
        self._count("manifest", len(manifest.data))

    def _publish(self, final: Path, data: bytes, digest: Digest) -> None:
        """Held (flocked) from creation to rename, so no clean-up takes it for a leftover."""
        tmp = self._temp_path(digest)
        try:
            with tmp.open("xb") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp.rename(final)
            sync_directory(final.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def _temp_path(self, digest: Digest) -> Path:
        return self._tmp / f"{digest.hex}.{secrets.token_hex(6)}.part"

    # --- housekeeping ---------------------------------------------------------------------

    def objects(self, kind: ContentKind) -> Iterator[StoredObject]:
        """Files that are not named like a digest are not content and are skipped."""
        for directory, _, names in os.walk(self._root / _TREES[kind]):
            algorithm = Path(directory).parent.name
            for name in names:
                if name.endswith(".type"):
                    continue
                try:
                    digest = Digest.parse(f"{algorithm}:{name}")
                    stat = (Path(directory) / name).stat()
                except (RegistryError, FileNotFoundError):
                    continue
                yield StoredObject(kind, digest, stat.st_size, stat.st_mtime)

    def remove(self, kind: ContentKind, digest: Digest) -> int:
        """A client reading the file keeps it open until done (the data goes when the last
        one closes it)."""
        path = self._blob_path(digest) if kind == "blob" else self._manifest_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        if kind == "manifest":
            path.with_name(path.name + ".type").unlink(missing_ok=True)
            self._recent.forget(digest)
        self._usage.add(kind, -1, -size)
        return size

    def measure(self) -> dict[ContentKind, Usage]:
        """Media-type files beside manifests are not counted as objects."""
        measured: dict[ContentKind, Usage] = {}
        for kind, sub in _TREES.items():
            usage = Usage()
            for directory, _, names in os.walk(self._root / sub):
                for name in names:
                    if name.endswith(".type"):
                        continue
                    try:
                        usage.bytes += (Path(directory) / name).stat().st_size
                    except FileNotFoundError:
                        continue  # removed while walking
                    usage.objects += 1
            measured[kind] = usage
        self._usage.set(measured)
        return measured

    def free_bytes(self) -> int:
        """Space left for the mirror on the data dir's filesystem."""
        stat = os.statvfs(self._root)
        return stat.f_bavail * stat.f_frsize

    def check_writable(self) -> None:
        probe = self._tmp / f"ready.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()

    def stale_temp_files(self, older_than: float) -> list[TempFile]:
        found = []
        for path in self._tmp.iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime > older_than or path.is_dir() or not self._is_leftover(path):
                continue
            found.append(TempFile(path.name, stat.st_size))
        return found

    def _is_leftover(self, path: Path) -> bool:
        """Whether no live process is writing `path`: a download's spool files while its
        claim is held, a writer's temp file while it holds its flock."""
        digest = self._spool_of(path)
        if digest is not None:
            return not self.spool(digest).in_progress()
        return not held(path)

    def remove_temp_file(self, temp: TempFile) -> None:
        (self._tmp / temp.name).unlink(missing_ok=True)

    def remove_temp_files(self) -> int:
        """A dead download's files go at once (its claim is free, so no process writes
        them); anything else once it is old enough and unheld."""
        removed = 0
        cutoff = time.time() - TEMP_GRACE_SECONDS
        for path in self._tmp.iterdir():
            try:
                young = path.stat().st_mtime > cutoff
            except FileNotFoundError:
                continue
            if not self._is_leftover(path) or (young and self._spool_of(path) is None):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        return removed


_TREES: dict[ContentKind, str] = {"blob": "blobs", "manifest": "manifests"}
