"""Reading a bundle: its tar entries, once and in order (standard input works), every blob
entry streamed into the store's verified writer; then `check` says whether what the
metadata names is all there. The one place import stages content (`_stage`); `commit`
publishes it. The archive is a blocking stream, read in threads between the writes."""

from __future__ import annotations

import asyncio
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, cast

from mirror.admin.bundle.check import Bundle, check
from mirror.admin.bundle.layout import (
    INDEX_JSON,
    MAX_MANIFEST_BYTES,
    MAX_METADATA_BYTES,
    OCI_LAYOUT,
    TAGS_JSON,
    BundleError,
    Staged,
)
from mirror.admin.bundle.progress import Progress
from mirror.errors import RegistryError
from mirror.reference import Digest
from mirror.storage import ContentStore, IntegrityError
from mirror.units import human_size

CHUNK = 1024 * 1024
# Directory entries a bundle may have (tar tools add them; export writes none).
_DIRECTORIES = re.compile(r"blobs(/[a-z0-9]+)?|mirror")
_BLOB_ENTRY = re.compile(r"blobs/(?P<algorithm>[^/]+)/(?P<hex>[^/]+)")


async def read_bundle(source: IO[bytes], store: ContentStore, progress: Progress) -> Bundle:
    """Read a bundle from a blocking stream: every blob entry into one of `store`'s writers,
    verified there, then check that everything index.json and tags.json name is there.
    Raises BundleError naming the bad entry, with every writer aborted. The returned
    bundle's writers are the caller's to commit or abort (`Bundle.discard`); those of
    entries nothing names are aborted already."""
    staged: dict[Digest, Staged] = {}
    try:
        metadata = await _stage_entries(_CountingReader(source, progress), store, staged, progress)
        bundle = check(staged, metadata)
    except BaseException:
        await _abort(staged.values())
        raise
    finally:
        progress.finish()
    await _abort(entry for digest, entry in staged.items() if digest not in bundle.staged)
    return bundle


async def _abort(entries: Iterable[Staged]) -> None:
    for entry in list(entries):
        await entry.writer.abort()


@dataclass
class _Position:
    """Where reading the archive is: the last entry seen, and whether in its data."""

    entry: str | None = None
    reading: bool = False


async def _stage_entries(
    source: _CountingReader, store: ContentStore, staged: dict[Digest, Staged], progress: Progress
) -> dict[str, bytes]:
    """Stage every blob entry into `staged`; the metadata entries, read into memory."""
    metadata: dict[str, bytes] = {}
    at = _Position()
    try:
        # A stream (standard input works): entries are read once, in order, nothing seeks.
        opened = await asyncio.to_thread(tarfile.open, fileobj=cast(IO[bytes], source), mode="r|*")
        with opened as tar:
            members = iter(tar)
            while (member := await asyncio.to_thread(next, members, None)) is not None:
                at.entry, at.reading = member.name, False
                name = at.entry = _entry_name(member.name)
                reader = _open_member(tar, member, name)
                if reader is None:
                    continue  # a directory
                at.reading = True
                if name in (OCI_LAYOUT, INDEX_JSON, TAGS_JSON):
                    metadata[name] = await _read_metadata(reader, member, name, metadata)
                else:
                    digest = _blob_digest(name, staged)
                    staged[digest] = await _stage(reader, store, digest, member.size, name)
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


async def _read_metadata(
    reader: IO[bytes], member: tarfile.TarInfo, name: str, metadata: dict[str, bytes]
) -> bytes:
    if name in metadata:
        raise BundleError(name, "appears twice")
    if member.size > MAX_METADATA_BYTES:
        raise BundleError(name, f"is too large ({human_size(member.size)})")
    data = await asyncio.to_thread(reader.read, member.size)
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


async def _stage(
    reader: IO[bytes], store: ContentStore, digest: Digest, size: int, name: str
) -> Staged:
    """Stream one entry into the store's writer for `digest`, which verifies it (aborted
    unless it does). Its bytes are kept too when it may be a manifest."""
    writer = store.blob_writer(digest)
    chunks: list[bytes] | None = [] if size <= MAX_MANIFEST_BYTES else None
    try:
        while writer.written < size:
            chunk = await asyncio.to_thread(reader.read, min(CHUNK, size - writer.written))
            if not chunk:
                raise BundleError(name, _truncated(writer.written, size))
            await writer.write(chunk)
            if chunks is not None:
                chunks.append(chunk)
        await writer.verify(size)
    except IntegrityError as exc:
        await writer.abort()
        found = f"its content hashes to {exc.actual}, not to its name" if exc.actual else str(exc)
        raise BundleError(name, f"corrupt: {found}") from None
    except BaseException:
        await writer.abort()
        raise
    data = b"".join(chunks) if chunks is not None else None
    return Staged(writer, size, data if data is not None and _is_json(data) else None)


def _is_json(data: bytes) -> bool:
    """Whether `data` parses as JSON, as a manifest must (other entries are not kept)."""
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True
