"""The C allocator's heap, in a process that moves blobs through buffers of a few hundred
KiB that live for moments.

glibc's malloc gives the top of its heap back to the system once more than a threshold is
free there (a threshold it adjusts as it goes: a few hundred KiB here), and takes it back
at the next allocation. A download's buffers in flight, allocated and freed in turn, then
cost a page fault for every 4 KiB they take back, again and again (about 12,000 for a cold
200 MiB blob, and a virtual machine pays dearly for each). So a server keeps up to
`TRIM_THRESHOLD` free at the top, and serves allocations below `MMAP_THRESHOLD` from the
heap (setting one threshold stops glibc adjusting the other): they reuse the same pages.
When its last download ends, a process gives the free memory back at once, so what its
downloads took is not held while it serves from the cache.

Where the C library is not glibc, there is nothing to do.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 8 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3


def _function(
    name: str, *argtypes: type[ctypes.c_int] | type[ctypes.c_size_t]
) -> Callable[..., int] | None:
    """The C library's function `name`, returning an int; None where it has none."""
    found = getattr(ctypes.CDLL(None), name, None)
    if found is None:
        return None
    found.argtypes = argtypes
    found.restype = ctypes.c_int
    function: Callable[..., int] = found
    return function


_mallopt = _function("mallopt", ctypes.c_int, ctypes.c_int)
_malloc_trim = _function("malloc_trim", ctypes.c_size_t)


def keep() -> None:
    """Set the thresholds for this process (and the workers it forks)."""
    if _mallopt is not None:
        _mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def give_back() -> None:
    """Return the heap's free memory to the system."""
    if _malloc_trim is not None:
        _malloc_trim(0)
