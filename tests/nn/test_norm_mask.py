"""RMSNorm against LLaMA's reference (bit for bit in bf16) and the attention mask against its
definition, written out as loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from lmzoo.nn.attention import build_mask
from lmzoo.nn.norm import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rmsnorm_matches_llama(dtype):
    g = torch.Generator().manual_seed(0)
    w = 1 + 0.3 * torch.randn(48, generator=g)
    x = (3 * torch.randn(2, 5, 48, generator=g)).to(dtype)
    ref, ours = LlamaRMSNorm(48, eps=1e-5), RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(w)
        ours.weight.copy_(w)
    ref, ours = ref.to(dtype), ours.to(dtype)
    a, b = ref(x), ours(x)
    assert a.dtype == b.dtype == dtype
    assert torch.equal(a, b)  # same op order: statistic in fp32, cast back, then weight


def naive_mask(q_start, T, valid, window, chunk, positions):
    """allowed[b, t, j]: query slot q_start + t may read key slot j."""
    L = q_start + T
    B = valid.shape[0]
    out = torch.zeros(B, T, L, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            i = q_start + t
            for j in range(L):
                ok = j <= i and bool(valid[b, j])
                if window is not None:
                    ok = ok and i - j < window
                if chunk is not None:
                    ok = ok and positions[b, i] // chunk == positions[b, j] // chunk
                out[b, t, j] = ok or i == j  # a padded query still sees itself
    return out


@pytest.mark.parametrize("q_start,T", [(0, 9), (6, 3), (8, 1)])
@pytest.mark.parametrize("window,chunk", [(None, None), (3, None), (None, 4), (5, 2)])
def test_build_mask_matches_definition(q_start, T, window, chunk):
    L = q_start + T
    valid = torch.ones(3, L, dtype=torch.long)
    valid[1, :2] = 0  # left padding
    valid[2, :5] = 0
    positions = (valid.cumsum(-1) - 1).clamp(min=0)
    m = build_mask(q_start=q_start, T=T, key_valid=valid, window=window, device="cpu", chunk=chunk,
                   positions=positions)
    assert m.shape[1] == 1
    m = m.expand(3, 1, T, L)[:, 0]
    assert torch.equal(m, naive_mask(q_start, T, valid, window, chunk, positions))


def test_mask_without_padding_is_causal():
    m = build_mask(q_start=0, T=6, key_valid=None, window=None, device="cpu")
    assert torch.equal(m[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


def test_gqa_attention_equals_repeated_kv():
    """SDPA's enable_gqa shares each kv head with n_head / n_kv_head consecutive query heads, the
    layout LLaMA's repeat_kv produces."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 5, 8, generator=g)
    k, v = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    b = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), is_causal=True)
    torch.testing.assert_close(a, b)
