"""How a prefetch's outcome reads, on a command's output and in the server's log alike."""

from __future__ import annotations

from mirror.cache.prefetch.engine import ImageResult
from mirror.units import human_size


def summary_line(result: ImageResult) -> str:
    """One image's outcome in a line (without its name's failure, see `error`)."""
    digest = str(result.digest)[:19] if result.digest is not None else "-"
    platforms = ", ".join(p or "single platform" for p in result.platforms) or "-"
    line = (
        f"{result.image} {digest} [{platforms}]: "
        f"{result.blobs_fetched} blobs fetched ({human_size(result.bytes_fetched)}), "
        f"{result.blobs_cached} already cached ({human_size(result.bytes_cached)})"
    )
    if result.missing_platforms:
        line += f"; not in the index: {', '.join(result.missing_platforms)}"
    return line
