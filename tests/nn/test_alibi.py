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
