"""RMSNorm against LLaMA's reference (bit for bit in bf16) and the attention mask against its
definition, written out as loops."""

from __future__ import annotations

import pytest
import torch
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
    q_slot = torch.arange(q_start, L)[None].expand(3, T)
    m = build_mask(q_slot=q_slot, L=L, key_valid=valid, window=window, chunk=chunk,
                   q_pos=positions[:, q_start:], k_pos=positions)
    assert m.shape == (3, 1, T, L)
    assert torch.equal(m[:, 0], naive_mask(q_start, T, valid, window, chunk, positions))


def test_build_mask_rows_at_different_slots():
    """Continuous batching: each row's queries sit at its own slots; every row equals its mask alone."""
    L = 10
    valid = torch.ones(2, L, dtype=torch.long)
    valid[0, 7:] = 0  # row 0 has written 7 slots, row 1 all 10
    q_slot = torch.tensor([[6], [9]])
    positions = torch.arange(L)[None].expand(2, L)
    m = build_mask(q_slot=q_slot, L=L, key_valid=valid, window=4)
    for b, start in enumerate((6, 9)):
        alone = naive_mask(start, 1, valid[b:b + 1, : start + 1], 4, None, positions[b:b + 1])
        assert torch.equal(m[b, 0, :, : start + 1], alone[0])
        assert not m[b, 0, :, start + 1:].any()


def test_mask_without_padding_is_causal():
    m = build_mask(q_slot=torch.arange(6)[None], L=6, key_valid=None, window=None)
    assert torch.equal(m[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


def test_gqa_attention_equals_repeated_kv():
    """lmzoo's Attention with grouped kv heads equals the same layer written out as MHA with each kv
    head repeated for its n_head / n_kv_head consecutive query heads (LLaMA's repeat_kv layout)."""
    from lmzoo.config import ModelConfig
    from lmzoo.nn.attention import Attention, AttnInputs

    cfg = ModelConfig(vocab_size=8, n_layer=1, n_embd=48, n_head=6, n_kv_head=2, intermediate_size=8)
    torch.manual_seed(0)
    attn = Attention(cfg, 0)
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        ours = attn(x, AttnInputs(q_slot=torch.arange(5)[None]), None)
        q, k, v = attn.qkv(x).split((48, 16, 16), dim=-1)
        q = q.view(2, 5, 6, 8).transpose(1, 2)
        k, v = (t.view(2, 5, 2, 8).transpose(1, 2).repeat_interleave(3, dim=1) for t in (k, v))
        s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
        s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
        ref = attn.o((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 48))
    torch.testing.assert_close(ours, ref)
