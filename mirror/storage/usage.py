"""What a store holds, counted once for every process using it: in a small file of the data
dir that each process adds its commits to and takes its removals from, under an flock, and
that a measure (a walk of the store) sets. The workers of a server (and a `mirror gc` or an
import beside them) then see one count: eviction notices the cache over its limit whichever
worker added the content, and every worker's /metrics says the same size.

The count is an estimate between measures (content removed by hand, or a commit counted
while a measure walked past it), which the next measure corrects.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mirror.storage.protocol import ContentKind, Usage

_KINDS: tuple[ContentKind, ...] = ("blob", "manifest")
_LAYOUT = struct.Struct("<4q")  # blob objects, blob bytes, manifest objects, manifest bytes


class SharedUsage:
    """The count in the file at `path` (created empty when missing)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def read(self) -> dict[ContentKind, Usage]:
        with self._locked(fcntl.LOCK_SH) as fd:
            return _unpack(os.pread(fd, _LAYOUT.size, 0))

    def add(self, kind: ContentKind, objects: int, nbytes: int) -> None:
        """Count `objects` more (or fewer, when negative) of `kind`, `nbytes` bytes in all;
        never below zero."""
        with self._locked(fcntl.LOCK_EX) as fd:
            usage = _unpack(os.pread(fd, _LAYOUT.size, 0))
            usage[kind] = Usage(
                max(0, usage[kind].objects + objects), max(0, usage[kind].bytes + nbytes)
            )
            _write(fd, usage)

    def set(self, usage: Mapping[ContentKind, Usage]) -> None:
        with self._locked(fcntl.LOCK_EX) as fd:
            _write(fd, usage)

    @contextmanager
    def _locked(self, operation: int) -> Iterator[int]:
        # Opened for each use: an flock belongs to an open file, which a forked worker
        # would otherwise share with its supervisor.
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, operation)
            yield fd
        finally:
            os.close(fd)


def _unpack(data: bytes) -> dict[ContentKind, Usage]:
    """The counts in `data`; zeros for an empty (new) or damaged file."""
    if len(data) != _LAYOUT.size:
        return {kind: Usage() for kind in _KINDS}
    values = _LAYOUT.unpack(data)
    return {kind: Usage(values[2 * i], values[2 * i + 1]) for i, kind in enumerate(_KINDS)}


def _write(fd: int, usage: Mapping[ContentKind, Usage]) -> None:
    values = [n for kind in _KINDS for n in (usage[kind].objects, usage[kind].bytes)]
    os.pwrite(fd, _LAYOUT.pack(*values), 0)
