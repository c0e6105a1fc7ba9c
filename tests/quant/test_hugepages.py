"""Weights moved into transparent huge pages (lmzoo.quant.hugepages): the same tensors, values and
aliasing, in one 2 MiB-aligned mapping advised for huge pages."""

from __future__ import annotations

import pytest
import torch

from lmzoo.quant.hugepages import HUGE_PAGE, into_huge_pages, thp_mode

THP = thp_mode() in ("always", "madvise")


def mapping_of(address: int) -> tuple[int, int, set[str]]:
    """(start, end, VmFlags) of this process's mapping holding `address` (/proc/self/smaps)."""
    found = None
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            found = (lo, hi) if lo <= address < hi else None
        elif found and line.startswith("VmFlags:"):
            return found[0], found[1], set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_tensors_keep_values_aliasing_and_autograd():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, 7, generator=g)
    tied = [base, base[3:9], base.t()]  # three views of one storage, one transposed
    p = torch.nn.Parameter(torch.randn(5, generator=g))
    others = [torch.randint(-128, 128, (300,), dtype=torch.int8, generator=g),
              torch.randn(33, generator=g).half(), torch.arange(1000, dtype=torch.int32)[17:], p]
    tensors = tied + others
    before = [t.clone() for t in tensors]
    shapes = [(t.shape, t.stride(), t.dtype) for t in tensors]
    nbytes = sum(t.untyped_storage().nbytes() for t in [base] + others)
    moved = into_huge_pages(tensors)
    for t, b, s in zip(tensors, before, shapes):
        assert (t.shape, t.stride(), t.dtype) == s
        assert torch.equal(t, b)
    assert isinstance(p, torch.nn.Parameter) and p.requires_grad
    base[4, 0] = 123.0  # still one storage: the slice and the transpose see the write
    assert tied[1][1, 0] == 123.0 and tied[2][0, 4] == 123.0
    (p * 3).sum().backward()
    assert torch.equal(p.grad, torch.full((5,), 3.0))
    if not THP:
        assert moved == 0
        return
    assert nbytes <= moved < nbytes + 64 * len(tensors)
    storages = {t.untyped_storage().data_ptr() for t in tensors}
    assert len(storages) == 1  # one mapping for all of them
    start = storages.pop()
    assert start % HUGE_PAGE == 0
    lo, hi, flags = mapping_of(start)
    assert "hg" in flags  # advised for huge pages (whether the kernel grants them is its choice)
    assert all(lo <= t.data_ptr() < hi for t in tensors)


def test_nothing_to_move():
    assert into_huge_pages([]) == 0
    assert into_huge_pages([torch.empty(0)]) == 0


@pytest.mark.skipif(not THP, reason="transparent huge pages are off on this machine")
def test_model_weights_sit_in_huge_pages_with_the_same_logits(smollm2_path):
    import lmzoo
    from lmzoo.quant.gemv import streamed_weights

    model = lmzoo.from_pretrained(smollm2_path, huge_pages=True)
    weights = [t for m in model.modules() for t in streamed_weights(m)]
    assert weights and len({t.untyped_storage().data_ptr() for t in weights}) == 1
    assert "hg" in mapping_of(weights[0].data_ptr())[2]
    plain = lmzoo.from_pretrained(smollm2_path)  # the default: weights where loading put them (heap
    # memory may be advised too: numpy advises its large arrays, and freed heap keeps the flag)
    assert len({t.untyped_storage().data_ptr() for m in plain.modules() for t in streamed_weights(m)}) > 1
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314, 2]])
    with torch.inference_mode():
        assert torch.equal(model(ids), plain(ids))
        assert torch.equal(model(ids[:, :1]), plain(ids[:, :1]))
