"""Memory accounting: what a phase frees is handed back before the next phase is measured."""
import subprocess
import sys

import pytest
import torch

from spinlora import accounting
from spinlora.accounting import _malloc_trim, current_rss, release_free_memory

# One process per side (glibc's threshold is process-wide): a 30 MB block mapped and freed, which
# raises glibc's own threshold to 30 MB; then 40 blocks of 5 MB, touched, one more above them,
# and the 40 freed. Prints how much of the 200 MB stays resident.
HOLES = r"""
import ctypes, sys
from spinlora.accounting import current_rss, fix_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold() == 4 << 20
def block(n):
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    return p
libc.free(block(30 << 20))
before = current_rss()
blocks = [block(5 << 20) for _ in range(40)]
top = block(5 << 20)
for p in blocks:
    libc.free(p)
print(current_rss() - before)
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc's malloc_trim")
def test_free_heap_pages_go_back_to_the_os():
    """Blocks under glibc's mmap threshold live in its heap; freed below a block still in use
    they stay resident (glibc trims only the heap's top) until ``release_free_memory``."""
    blocks = [torch.ones(8192) for _ in range(4000)]  # 32 KB each, ~128 MB, in the heap
    keep = torch.ones(8192)  # above them: the heap's top stays in use
    del blocks
    before = current_rss()
    release_free_memory()
    after = current_rss()
    assert before - after > 64 * 2**20, (before, after)
    assert keep.sum() == 8192


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc")
def test_a_fixed_mmap_threshold_leaves_no_resident_holes(monkeypatch):
    """Under glibc's own threshold, which rises to the largest mapped block freed, 5 MB blocks
    come from the heap and, freed below one still in use, stay resident; with the threshold a
    run fixes at 4 MB each has its own mapping and goes back to the OS when freed."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)

    def kept(side: str) -> int:
        out = subprocess.run([sys.executable, "-c", HOLES, side], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    own = kept("glibc")
    if own < 150 * 2**20:
        pytest.skip(f"this C library handed the freed blocks back itself ({own >> 20} MB kept)")
    assert kept("fixed") < 30 * 2**20, own


def test_the_process_peak_survives_the_phase_meters_resets(monkeypatch):
    """A phase meter resets the kernel's RSS high-water mark (which ru_maxrss and
    /usr/bin/time -v read); the process's own peak keeps what was reached before the reset, so a
    run's ``process_peak_rss_bytes`` is never the last phase's peak alone."""
    from spinlora import accounting
    from spinlora.accounting import MemoryMeter, process_peak_rss

    monkeypatch.setattr(accounting, "_process_peak", 0)  # earlier tests' peaks out of the way
    big = torch.ones(100 * 2**20)  # 400 MB, touched
    with_big = current_rss()
    del big
    release_free_memory()
    meter = MemoryMeter(torch.device("cpu"))
    meter.start()  # resets the high-water mark: the next phase's peak alone
    small = torch.ones(10 * 2**20)
    phase_peak = meter.peak()
    # the phase does not see the freed block; the process's peak does (the kernel's counters
    # lag the RSS by a few pages)
    assert phase_peak < with_big - 200 * 2**20
    assert process_peak_rss() > with_big - 20 * 2**20
    assert small.sum() == 10 * 2**20


# One process (glibc's settings are process-wide): 20 tensors of 16 MB made, touched and freed
# under the run's fixed threshold, then inside ``decoding_heap``; prints the minor page faults
# of each, and the RSS inside and after it.
CHURN = r"""
import resource, sys, torch
from spinlora.accounting import current_rss, decoding_heap, decoding_heap_active, fix_mmap_threshold
assert fix_mmap_threshold() == 4 << 20
def churn():
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        t = torch.empty(4 << 20).fill_(1.0)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
plain = churn()
with decoding_heap():
    active = decoding_heap_active()
    churn()  # the heap grows once
    inside, rss_inside = churn(), current_rss()
print(plain, inside, int(active), int(decoding_heap_active()), rss_inside - current_rss())
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc")
@pytest.mark.parametrize("env", [None, "MALLOC_TOP_PAD_"])
def test_decoding_reuses_its_large_blocks_and_hands_them_back(monkeypatch, env):
    """Under the run's 4 MB threshold each 16 MB block is a fresh mapping, faulted in page by
    page (4096 faults) and unmapped when freed; inside ``decoding_heap`` (every ``generate``)
    it comes from the heap, resident after its first use, and leaving hands those pages back.
    An allocator setting in the environment is the user's choice: then nothing changes."""
    for k in accounting.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    if env:
        monkeypatch.setenv(env, str(64 << 10))
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                         check=True)
    plain, inside, active, after, handed_back = map(int, out.stdout.split())
    assert plain > 20 * 3000, plain  # each block faulted in anew
    assert after == 0
    if env:
        assert active == 0 and inside > 20 * 3000, (active, inside)
        return
    assert active == 1
    assert inside < 2000, (plain, inside)
    assert handed_back > 8 << 20, handed_back
