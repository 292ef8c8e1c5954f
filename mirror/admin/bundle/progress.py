"""How export and import show progress on stderr, and count things in their summaries."""

from __future__ import annotations

import sys
import time
from typing import IO

from mirror.units import human_size


def count(number: int, noun: str) -> str:
    """`1 image`, `3 images`."""
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
            f"{self._verb}: {count(self._objects, 'object')}, {human_size(self._bytes)} "
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
        objects = count(self._objects, "object")
        self._stream.write(f"\r{self._verb}: {objects}, {done}\033[K")
        self._stream.flush()
