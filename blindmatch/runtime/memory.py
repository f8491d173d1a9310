"""Memory of the long-running servers: buffers the size of a chunk go back to the system.

A round moves its sets as chunks of 260 KiB (4,096 points, in requests and answers) through a
dozen gRPC threads. glibc serves such large allocations with their own mmap only until the first
one is freed; then it raises that threshold, and later chunks come from the per-thread arenas,
which keep what is freed: in a 3 x 10M round of v1 (chunks of 128 KiB) the coordinator held
about 300 MB of arenas beyond its tags (64 MB per arena), and a node its share. Fixing the
threshold below the chunk size gives every chunk buffer its own mapping, unmapped as soon as it
is freed, for a few microseconds per chunk (evaluating the chunk takes over 100 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter
LARGE_BUFFER: Final = 64 * 1024  # below a chunk's 260 KiB, above what small messages use


def return_large_buffers() -> bool:
    """Have glibc map every allocation of LARGE_BUFFER bytes or more on its own, so it is
    returned when freed. False, changing nothing, on another C library."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER))
