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
