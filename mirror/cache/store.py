"""The content-addressed store: blobs and manifests on disk, keyed by digest.

Nothing becomes visible here unless its digest was verified: bytes go to a temp file under
`<data_dir>/tmp/` while they are hashed, are fsynced, and only then renamed into place. A
crash leaves at most a temp file, which the next start removes. Manifests are kept as the
exact upstream bytes, with their media type beside them.

Layout under the data dir:
    blobs/<algorithm>/<first two hex>/<hex>
    manifests/<algorithm>/<first two hex>/<hex>        the exact bytes
    manifests/<algorithm>/<first two hex>/<hex>.type   their media type
    tmp/                                               in-progress writes
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mirror.errors import RegistryError
from mirror.reference import Digest

log = logging.getLogger(__name__)

# Memory for recently read manifests (a typical one is a few KB).
RECENT_MANIFEST_BYTES = 32 * 1024 * 1024


class IntegrityError(Exception):
    """Bytes did not match the digest (or size) they were fetched for."""


ContentKind = Literal["blob", "manifest"]


@dataclass
class Usage:
    """How much of one kind of content the store holds."""

    objects: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class StoredObject:
    """One blob or manifest on disk."""

    kind: ContentKind
    digest: Digest
    size: int
    mtime: float  # unix time it was written


@dataclass(frozen=True)
class StoredManifest:
    data: bytes
    media_type: str
    digest: Digest


class BlobWriter:
    """Writes one blob to a temp file while hashing it; `commit` verifies and publishes."""

    def __init__(
        self,
        tmp_path: Path,
        final_path: Path,
        digest: Digest,
        *,
        exclusive: bool = True,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.path = tmp_path
        self._final = final_path
        self._digest = digest
        self._on_commit = on_commit
        self._hash = hashlib.new(digest.algorithm)
        # Not exclusive only for a path owned through a DownloadClaim (a crashed holder may
        # have left the file behind).
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
        self._fd: int | None = os.open(tmp_path, flags, 0o644)
        self.written = 0

    def write(self, chunk: bytes) -> None:
        assert self._fd is not None, "write after commit or abort"
        view = memoryview(chunk)
        while view:
            done = os.write(self._fd, view)
            view = view[done:]
        self._hash.update(chunk)
        self.written += len(chunk)

    async def commit(self, expected_size: int | None) -> None:
        """Verify size and digest, fsync, then rename into place. On mismatch the temp file
        is removed and IntegrityError raised: the bytes never become visible."""
        assert self._fd is not None, "commit after commit or abort"
        actual = self._hash.hexdigest()
        if expected_size is not None and self.written != expected_size:
            self.abort()
            raise IntegrityError(f"expected {expected_size} bytes, got {self.written}")
        if actual != self._digest.hex:
            self.abort()
            raise IntegrityError(f"content hashes to {self._digest.algorithm}:{actual}")
        fd = self._fd
        await asyncio.to_thread(os.fsync, fd)
        os.close(fd)
        self._fd = None
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self.path.rename(self._final)
        if self._on_commit is not None:
            self._on_commit(self.written)

    def abort(self) -> None:
        """Discard the temp file; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class DownloadClaim:
    """The claim on one blob's download. While held, the bytes go to a well-known temp file
    (with the size announced beside it) so other processes on this host can stream them."""

    def __init__(self, store: FilesystemStore, digest: Digest, fd: int, lock: Path) -> None:
        self._store = store
        self._digest = digest
        self._fd: int | None = fd
        self._lock = lock
        self.data_path, self.size_path = store.download_files(digest)

    def writer(self, size: int | None) -> BlobWriter:
        """Start writing: the data file exists before the size is announced, so a process
        that sees the size can always open the data (or, later, the committed blob)."""
        writer = BlobWriter(
            self.data_path,
            self._store.blob_path(self._digest),
            self._digest,
            exclusive=False,
            on_commit=lambda size: self._store.count("blob", size),
        )
        announce = self.size_path.with_suffix(f".{secrets.token_hex(4)}")
        announce.write_text("" if size is None else str(size))
        announce.rename(self.size_path)
        return writer

    def release(self) -> None:
        """Give the claim up (after a commit or a failure); the lock file goes first, so a
        process taking the claim later cannot hold a lock on a removed file."""
        if self._fd is None:
            return
        self.size_path.unlink(missing_ok=True)
        self._lock.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class FilesystemStore:
    """Blobs and manifests under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        for sub in ("blobs", "manifests", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._recent: OrderedDict[Digest, StoredManifest] = OrderedDict()
        self._recent_bytes = 0
        # What the store holds: measured by `measure()` (a walk of the tree, at start and
        # now and then), kept current in between by counting what this process commits.
        self.usage: dict[ContentKind, Usage] = {"blob": Usage(), "manifest": Usage()}

    def remove_temp_files(self) -> int:
        """Remove leftovers of writes that never committed (a crash, a kill -9)."""
        removed = 0
        for path in self.tmp.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        return removed

    def count(self, kind: ContentKind, size: int) -> None:
        """Note a newly committed object in `usage`."""
        usage = self.usage[kind]
        usage.objects += 1
        usage.bytes += size

    def objects(self, kind: ContentKind) -> Iterator[StoredObject]:
        """Every committed blob or manifest (blocking: walk in a thread). Files that are not
        named like a digest are not content and are skipped."""
        root = self.root / ("blobs" if kind == "blob" else "manifests")
        for directory, _, names in os.walk(root):
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
        """Delete a blob or manifest; the bytes freed (0 if it was not there). A client
        reading it keeps its open file until done (the data goes when the last one closes)."""
        path = self.blob_path(digest) if kind == "blob" else self._manifest_path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        if kind == "manifest":
            path.with_name(path.name + ".type").unlink(missing_ok=True)
            if (dropped := self._recent.pop(digest, None)) is not None:
                self._recent_bytes -= len(dropped.data)
        usage = self.usage[kind]
        usage.objects = max(0, usage.objects - 1)
        usage.bytes = max(0, usage.bytes - size)
        return size

    def free_bytes(self) -> int:
        """Space left for the mirror on the data dir's filesystem."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def blob_writer(self, digest: Digest) -> BlobWriter:
        """A writer for one blob outside any download claim (an import, say): a private
        temp file, published only by `commit` after it is verified."""
        return BlobWriter(
            self._temp_path(digest),
            self.blob_path(digest),
            digest,
            on_commit=lambda size: self.count("blob", size),
        )

    def measure(self) -> dict[ContentKind, Usage]:
        """Walk the store and set `usage` from what is on disk (blocking: run it in a
        thread). Media-type files beside manifests are not counted as objects."""
        measured: dict[ContentKind, Usage] = {}
        kinds: tuple[tuple[ContentKind, str], ...] = (("blob", "blobs"), ("manifest", "manifests"))
        for kind, sub in kinds:
            usage = Usage()
            for directory, _, names in os.walk(self.root / sub):
                for name in names:
                    if name.endswith(".type"):
                        continue
                    try:
                        usage.bytes += (Path(directory) / name).stat().st_size
                    except FileNotFoundError:
                        continue  # removed while walking
                    usage.objects += 1
            measured[kind] = usage
        self.usage = measured
        return measured

    # --- blobs ----------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex

    def blob_size(self, digest: Digest) -> int | None:
        """Size of a committed blob, or None if it is not cached."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    # --- one download per blob across the processes sharing this data dir -----------------

    def claim_download(self, digest: Digest) -> DownloadClaim | None:
        """Become the one process downloading `digest` (an flock, released by the kernel if
        the process dies), or None when another process holds it."""
        path = self._download_stem(digest).with_suffix(".lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                same = os.fstat(fd).st_ino == path.stat().st_ino
            except FileNotFoundError:
                same = False
            if same:
                return DownloadClaim(self, digest, fd, path)
            os.close(fd)  # the holder removed that lock file as we took it: try again

    def download_in_progress(self, digest: Digest) -> bool:
        """Whether some process holds the download claim for `digest`."""
        path = self._download_stem(digest).with_suffix(".lock")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _download_stem(self, digest: Digest) -> Path:
        """`tmp/<algorithm>-<hex>`: with .lock, .download and .size, a claimed download."""
        return self.tmp / f"{digest.algorithm}-{digest.hex}"

    def download_of(self, path: Path) -> Digest | None:
        """The digest whose claimed download `path` (a lock, data or size file in `tmp/`)
        belongs to, or None for any other temp file."""
        stem, dot, suffix = path.name.rpartition(".")
        algorithm, dash, hex_digest = stem.partition("-")
        if not dot or not dash or suffix not in ("lock", "download", "size"):
            return None
        try:
            return Digest.parse(f"{algorithm}:{hex_digest}")
        except RegistryError:
            return None

    def download_files(self, digest: Digest) -> tuple[Path, Path]:
        """Where the claimed download of `digest` writes its bytes, and its size beside them:
        what processes without the claim stream from."""
        stem = self._download_stem(digest)
        return stem.with_suffix(".download"), stem.with_suffix(".size")

    # --- manifests ------------------------------------------------------------------------

    def _manifest_path(self, digest: Digest) -> Path:
        return self.root / "manifests" / digest.algorithm / digest.hex[:2] / digest.hex

    def has_manifest(self, digest: Digest) -> bool:
        return self._manifest_path(digest).is_file()

    def read_manifest(self, digest: Digest) -> StoredManifest | None:
        """The manifest, from memory when it was read recently (they are immutable, and the
        same few are read over and over), else from disk."""
        if (manifest := self._recent.get(digest)) is not None:
            self._recent.move_to_end(digest)
            return manifest
        path = self._manifest_path(digest)
        try:
            data = path.read_bytes()
            media_type = path.with_name(path.name + ".type").read_text().strip()
        except FileNotFoundError:
            return None
        manifest = StoredManifest(data=data, media_type=media_type, digest=digest)
        self._remember(manifest)
        return manifest

    def _remember(self, manifest: StoredManifest) -> None:
        self._recent[manifest.digest] = manifest
        self._recent_bytes += len(manifest.data)
        while self._recent_bytes > RECENT_MANIFEST_BYTES:
            _, dropped = self._recent.popitem(last=False)
            self._recent_bytes -= len(dropped.data)

    async def write_manifest(self, manifest: StoredManifest) -> None:
        """Store verified manifest bytes. The media type is written first, so a visible
        manifest always has its type."""
        digest = manifest.digest
        actual = hashlib.new(digest.algorithm, manifest.data).hexdigest()
        if actual != digest.hex:
            raise IntegrityError(f"manifest hashes to {digest.algorithm}:{actual}")
        path = self._manifest_path(digest)
        is_new = not path.is_file()
        await asyncio.to_thread(
            self._publish, path.with_name(path.name + ".type"), manifest.media_type.encode(), digest
        )
        await asyncio.to_thread(self._publish, path, manifest.data, digest)
        if is_new:
            self.count("manifest", len(manifest.data))

    def _publish(self, final: Path, data: bytes, digest: Digest) -> None:
        tmp = self._temp_path(digest)
        try:
            with tmp.open("xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(final)
        finally:
            tmp.unlink(missing_ok=True)

    def _temp_path(self, digest: Digest) -> Path:
        return self.tmp / f"{digest.hex}.{secrets.token_hex(6)}.part"
