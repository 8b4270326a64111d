"""Keep freed host memory inside the process (glibc malloc tuning for the CPU tools and the node).

Why: PyTorch's CPU allocator has no cache; every intermediate tensor is a fresh ``malloc``.
glibc serves large blocks with ``mmap`` and hands freed ones back to the kernel, so the next
frame's tensors start on new pages, and every first touch of a 4 KiB page is a page fault
with the page zeroed by the kernel. A B1 stream frame at 256x512 allocated about 80 MB of
fresh pages (about 20,000 faults, 50 to 80 ms of system time on the 2-core CI machine, more
in a VM); an elementwise ``add`` on a new 8 MB output took 8 ms instead of 1. Raising the
mmap threshold and the trim threshold keeps freed blocks in malloc's heap for reuse: zero
faults per frame once the first frame has run. The cost is that the process keeps its peak
heap (it does not shrink after a large frame), which is what jemalloc or tcmalloc would do too.

Call :func:`keep_freed_memory` once at the start of a process (the console entry points do);
:func:`release_freed_memory` hands the free heap back when a large user is gone for good (the
lifecycle node's cleanup, after dropping the model).
Nothing changes when the user tunes malloc already (any ``MALLOC_*`` variable, or
``glibc.malloc`` tunables in ``GLIBC_TUNABLES``), when ``TV3S_MALLOC_TUNING=0``, or off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["keep_freed_memory", "release_freed_memory", "TUNING_ENV"]

log = logging.getLogger(__name__)

TUNING_ENV = "TV3S_MALLOC_TUNING"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # glibc <malloc.h>
# Blocks up to 1 GiB come from the heap (older glibc caps the threshold at 32 MiB: then that);
# the heap's free top is returned to the kernel only beyond 2 GiB.
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)
_TRIM_THRESHOLD = (1 << 31) - 1                     # mallopt takes a C int

_applied = None


def _glibc():
    """The C library when it is glibc, else None (musl's mallopt accepts and ignores everything)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Tune glibc malloc to reuse freed blocks instead of unmapping them; True when applied.

    Idempotent and safe to call from any entry point; logs one debug line with the reason
    when it does nothing.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(TUNING_ENV, "").strip() in ("0", "false", "no", "off"):
        log.debug("malloc tuning off (%s)", TUNING_ENV)
        return False
    if any(name.startswith("MALLOC_") for name in os.environ) or \
            "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("malloc tuned by the environment; leaving it alone")
        return False
    libc = _glibc()
    if libc is None:
        log.debug("not glibc: malloc tuning skipped")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not any(mallopt(M_MMAP_THRESHOLD, value) == 1 for value in _MMAP_THRESHOLDS):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused: malloc tuning skipped")
        return False
    _applied = mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return _applied


def release_freed_memory() -> None:
    """Return the heap's free memory to the kernel now (``malloc_trim(0)``: the free top and
    whole free pages inside the heap); a no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
