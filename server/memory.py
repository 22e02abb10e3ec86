"""Giving memory back to the system after a large call.

Two things kept a large unary message's memory long after its call: a reference
cycle (a failed call's exception holds the frame that holds the message, and the
frame holds the exception) that only the cycle collector frees, and it runs by
object counts, not bytes; and glibc's allocator, which keeps freed memory in its
arenas for reuse. Eight 64 MiB Invoke calls left the gateway 600 MB to 1.7 GB
larger. So after a call that held many bytes, collect cycles and trim the heap.
Both cost a walk of memory, so they run only after such calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger(__name__)

# A call that held at least this many bytes is followed by a trim.
TRIM_AFTER_BYTES = 4 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def give_back(held_bytes: int) -> None:
    """Return freed memory to the system if a call held ``held_bytes`` (glibc only)."""
    if held_bytes < TRIM_AFTER_BYTES:
        return
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    gc.collect()
    if trim is not None:
        trim(0)
