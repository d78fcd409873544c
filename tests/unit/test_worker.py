from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from pme_exporter.worker import MMAP_THRESHOLD_BYTES

# Run in a process of its own: what glibc's allocator was told stays for the process.
_PROBE = textwrap.dedent(
    """
    import ctypes

    from pme_exporter.worker import tune_malloc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mapped_after(size):
        before = libc.mallinfo2().hblkhd
        block = bytearray(size)
        return libc.mallinfo2().hblkhd - before, block

    # Freeing a mapped 16 MiB block raises glibc's threshold past 1 MiB.
    big = bytearray(16 << 20)
    del big
    untuned, _a = mapped_after(1 << 20)
    tuned_ok = tune_malloc()
    tuned, _b = mapped_after(1 << 20)
    print(untuned, tuned_ok, tuned)
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_freed_large_buffer_no_longer_moves_the_next_ones_onto_the_heap() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    untuned, tuned_ok, tuned = out.stdout.split()
    assert int(untuned) == 0  # glibc's own rule: on the heap, where it fragments
    assert tuned_ok == "True" and int(tuned) >= 1 << 20 > MMAP_THRESHOLD_BYTES  # mapped whole
