"""The image worker's allocator settings (core/images/malloc.py), in a process of their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

# A process that decodes two 16 MiB blocks (Pillow's block of an image's pixels) in turn, a
# small allocation made between: with glibc's moving threshold, freeing the first (mapped)
# raises the threshold, the second comes from the heap, and the small block above it keeps its
# 16 MiB resident after it is freed; with the fixed threshold both were mapped and unmapped.
PROGRAM = """
import ctypes, sys
from core.images.malloc import return_large_blocks
if sys.argv[1] == "fixed":
    assert return_large_blocks()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 16 * 2**20
first = libc.malloc(SIZE)
ctypes.memset(first, 1, SIZE)
libc.free(first)
second = libc.malloc(SIZE)
kept = libc.malloc(1024)
ctypes.memset(second, 1, SIZE)
libc.free(second)
print(int(open("/proc/self/statm").read().split()[1]) * 4096)
"""


def _rss(mode: str) -> int:
    ran = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=30,
        check=True,
    )  # fmt: skip
    return int(ran.stdout.strip())


def test_the_fixed_threshold_is_taken_by_this_c_library() -> None:
    from core.images.malloc import return_large_blocks

    assert return_large_blocks()


def test_freed_image_buffers_do_not_stay_resident() -> None:
    assert _rss("default") - _rss("fixed") >= 12 * 2**20
