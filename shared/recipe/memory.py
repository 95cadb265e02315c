"""Keeping a personalization's peak RSS down on glibc, for both runtimes (no torch, no numpy).

Long texts allocate and free activation buffers of several MiB at every step. glibc serves a
block by mmap only above its threshold, and it raises that threshold to the largest block freed
so far (up to 32 MiB): after the first long batch those buffers come from the heap, whose free
fragments stay in the RSS. A fixed threshold returns every buffer of 1 MiB or more to the
system when it is freed. Measured on the 256-token debates folder: PyTorch's peak went from
about 1,076 to 949 MB, onnxruntime's from 629 to 447 MiB. Not glibc: nothing to do.
"""

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c"))


def keep_large_buffers_off_the_heap() -> None:
    """Serve every allocation of MMAP_THRESHOLD bytes or more by mmap (glibc's mallopt)."""
    try:
        _libc().mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError, TypeError):
        pass


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc keeps what a long batch freed)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass
