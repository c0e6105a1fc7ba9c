"""The rope row permutation (checkpoints.permute) against its definition, and its inverse."""

import pytest
import torch

from lmzoo.checkpoints.permute import pairs_to_halves


@pytest.mark.parametrize("heads,rows,r,offset", [(3, 8, 8, 0), (2, 10, 4, 0), (4, 12, 6, 6), (1, 24, 8, 16)])
def test_pairs_to_halves_definition_and_inverse(heads, rows, r, offset):
    t = torch.randn(heads * rows, 5)
    out = pairs_to_halves(t, heads=heads, rope_dim=r, offset=offset)
    for h in range(heads):
        src, dst = t[h * rows:(h + 1) * rows], out[h * rows:(h + 1) * rows]
        for i in range(r // 2):  # pair (2i, 2i+1) of the window lands at (i, i + r/2)
            assert torch.equal(dst[offset + i], src[offset + 2 * i])
            assert torch.equal(dst[offset + i + r // 2], src[offset + 2 * i + 1])
        keep = [j for j in range(rows) if not offset <= j < offset + r]
        assert torch.equal(dst[keep], src[keep])
    assert torch.equal(pairs_to_halves(out, heads=heads, rope_dim=r, offset=offset, inverse=True), t)


def test_llama_cpp_permutation_roundtrip():
    """llama.cpp's convert_hf_to_gguf.py permute (halves -> pairs): w.reshape(n_head, 2, hd // 2, ...)
    .swapaxes(1, 2); pairs_to_halves undoes it."""
    n_head, hd = 4, 8
    w = torch.randn(n_head * hd, 6)
    gguf = w.reshape(n_head, 2, hd // 2, 6).swapaxes(1, 2).reshape(w.shape)
    assert torch.equal(pairs_to_halves(gguf, heads=n_head), w)
    assert torch.equal(pairs_to_halves(w, heads=n_head, inverse=True), gguf)


def test_window_outside_the_head_is_refused():
    with pytest.raises(ValueError, match="must be even-sized and fit 20 rows"):
        pairs_to_halves(torch.zeros(20, 2), heads=1, rope_dim=8, offset=16)
