"""ALiBi slopes for every head count against BLOOM's reference implementation."""

import pytest
import torch
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from lmzoo.nn.alibi import alibi_bias, alibi_slopes


@pytest.mark.parametrize("n_head", [1, 2, 3, 5, 6, 8, 12, 16, 20, 40, 112])
def test_slopes_and_bias_match_bloom(n_head):
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    ref = build_alibi_tensor(mask, n_head, torch.float32).view(2, n_head, 1, 6)
    keys = ((mask.cumsum(-1) - 1) * mask)
    assert torch.allclose(alibi_bias(alibi_slopes(n_head), keys), ref)


@pytest.mark.parametrize("n_head", [6, 32, 71])
def test_bfloat16_bias_matches_falcon(n_head):
    """Falcon-RW rounds slope x position to bfloat16 (positions past 256 are not exact there)."""
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor as falcon_alibi

    mask = torch.ones(2, 700, dtype=torch.long)
    mask[0, :5] = 0
    ref = falcon_alibi(mask, n_head, torch.float32).view(2, n_head, 1, 700)
    keys = ((mask.cumsum(-1) - 1) * mask)
    ours = alibi_bias(alibi_slopes(n_head), keys, dtype="bfloat16")
    assert torch.equal(ours, ref)
    assert not torch.equal(alibi_bias(alibi_slopes(n_head), keys), ref)  # the rounding matters
