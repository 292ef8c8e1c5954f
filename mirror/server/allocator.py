"""The C allocator's settings for a server process, which moves blobs through large buffers
that live for moments.

glibc's malloc gives the top of its heap back to the system once more than a threshold is
free there (a threshold it adjusts as it goes: a few hundred KiB here), and takes it back
at the next allocation. A download's buffers in flight, allocated and freed in turn, then
cost a page fault for every 4 KiB they take back, again and again (about 15,000 for a cold
200 MiB blob, and a virtual machine pays dearly for each). Keeping up to `TRIM_THRESHOLD`
free at the top, and serving allocations below `MMAP_THRESHOLD` from the heap (setting one
threshold stops glibc adjusting the other), lets them reuse the same pages.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3


def keep_heap() -> None:
    """Apply the settings to this process (and the workers it forks), where the C library
    has mallopt (glibc; elsewhere there is nothing to do)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
