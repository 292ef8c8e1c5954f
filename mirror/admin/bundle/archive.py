"""Reading a bundle: its tar entries, once and in order (standard input works), every blob
into a temp file while it is hashed; then `check` says whether what the metadata names is
all there. The one place import stages content (`_stage`); `commit` publishes it."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from mirror.admin.bundle.check import Bundle, check
from mirror.admin.bundle.layout import (
    INDEX_JSON,
    MAX_METADATA_BYTES,
    OCI_LAYOUT,
    TAGS_JSON,
    BundleError,
    Staged,
)
from mirror.admin.bundle.progress import Progress
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.units import human_size

CHUNK = 1024 * 1024
# Directory entries a bundle may have (tar tools add them; export writes none).
_DIRECTORIES = re.compile(r"blobs(/[a-z0-9]+)?|mirror")
_BLOB_ENTRY = re.compile(r"blobs/(?P<algorithm>[^/]+)/(?P<hex>[^/]+)")


def read_bundle(source: IO[bytes], tmp: Path, progress: Progress) -> Bundle:
    """Read a bundle from a stream: every blob entry into a temp file in `tmp` while it is
    hashed, then check that everything index.json and tags.json name is there. Raises
    BundleError naming the bad entry, with every temp file removed."""
    staged: dict[Digest, Staged] = {}
    try:
        metadata = _stage_entries(_CountingReader(source, progress), tmp, staged, progress)
        return check(staged, metadata)
    except BaseException:
        for entry in staged.values():
            entry.discard()
        raise
    finally:
        progress.finish()


@dataclass
class _Position:
    """Where reading the archive is: the last entry seen, and whether in its data."""

    entry: str | None = None
    reading: bool = False


def _stage_entries(
    source: _CountingReader, tmp: Path, staged: dict[Digest, Staged], progress: Progress
) -> dict[str, bytes]:
    """Stage every blob entry into `staged`; the metadata entries, read into memory."""
    metadata: dict[str, bytes] = {}
    at = _Position()
    token = secrets.token_hex(6)
    try:
        # A stream (standard input works): entries are read once, in order, nothing seeks.
        with tarfile.open(fileobj=cast(IO[bytes], source), mode="r|*") as tar:
            for member in tar:
                at.entry, at.reading = member.name, False
                name = at.entry = _entry_name(member.name)
                reader = _open_member(tar, member, name)
                if reader is None:
                    continue  # a directory
                at.reading = True
                if name in (OCI_LAYOUT, INDEX_JSON, TAGS_JSON):
                    metadata[name] = _read_metadata(reader, member, name, metadata)
                else:
                    digest = _blob_digest(name, staged)
                    target = tmp / f"import-{token}-{digest.algorithm}-{digest.hex}.part"
                    size = _stage(reader, target, digest, member.size, name)
                    staged[digest] = Staged(target, size)
                    progress.done(name, 0)
                at.reading = False
    except (tarfile.TarError, EOFError) as exc:
        if at.reading:
            message = f"truncated: the archive ends in the middle of it ({exc})"
            raise BundleError(at.entry, message) from None
        where = f"after {at.entry}" if at.entry else "at its start"
        raise BundleError(None, f"not a readable tar archive ({where}): {exc}") from None
    return metadata


def _open_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> IO[bytes] | None:
    """A regular file's reader; None for a directory a bundle may have."""
    if member.isdir():
        if not _DIRECTORIES.fullmatch(name):
            raise BundleError(name, "unexpected directory in a bundle")
        return None
    if not member.isreg() or member.issparse():
        kind = "a link" if member.issym() or member.islnk() else "not a regular file"
        raise BundleError(name, f"is {kind}; a bundle holds regular files only")
    reader = tar.extractfile(member)
    assert reader is not None
    return reader


def _read_metadata(
    reader: IO[bytes], member: tarfile.TarInfo, name: str, metadata: dict[str, bytes]
) -> bytes:
    if name in metadata:
        raise BundleError(name, "appears twice")
    if member.size > MAX_METADATA_BYTES:
        raise BundleError(name, f"is too large ({human_size(member.size)})")
    data = reader.read(member.size)
    if len(data) != member.size:
        raise BundleError(name, _truncated(len(data), member.size))
    return data


def _blob_digest(name: str, staged: dict[Digest, Staged]) -> Digest:
    """The digest a blob entry is named by (once in a bundle)."""
    match = _BLOB_ENTRY.fullmatch(name)
    if match is None:
        raise BundleError(name, "unexpected entry (not part of an OCI image layout)")
    try:
        digest = Digest.parse(f"{match['algorithm']}:{match['hex']}")
    except RegistryError as exc:
        raise BundleError(name, f"not named by a digest: {exc}") from None
    if digest in staged:
        raise BundleError(name, "appears twice")
    return digest


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
