"""Memory accounting: what a phase frees is handed back before the next phase is measured."""
import pytest
import torch

from spinlora.accounting import _malloc_trim, current_rss, release_free_memory


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
