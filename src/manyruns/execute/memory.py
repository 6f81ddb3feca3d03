"""Keep freed large blocks in the process heap (glibc).

A training step frees and reallocates the same large gradient buffers every step. By default
glibc returns blocks above 32 MB to the kernel and faults fresh zeroed pages back in on the
next step, which cost about 5% of an MLP step here. Raising the mmap and trim thresholds keeps
them in the heap. A no-op where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    return bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold - 1) == 1 and ok)
