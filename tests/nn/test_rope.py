"""RoPE and its context-extension rules against transformers' own tables.

Every rule is reached the way a checkpoint reaches it: an HF config (built by `LlamaConfig`, or a
transformers 4.x style config.json dict) goes through lmzoo's adapter, and the inverse frequencies and
the cos/sin multiplier are compared with `ROPE_INIT_FUNCTIONS` / `LlamaRotaryEmbedding` at lengths
inside and beyond the pretraining context.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from lmzoo.checkpoints.hf import llama_config
from lmzoo.nn.rope import RotaryEmbedding, apply_rope, inv_frequencies

SIZES = dict(vocab_size=10, hidden_size=64, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
             max_position_embeddings=64)

RULES = {
    "linear": {"rope_type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.5},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
    # llama3 with every frequency in the smoothed band
    "llama3-wide": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 0.001, "high_freq_factor": 1000.0,
                    "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                         "truncate": False, "beta_fast": 16, "beta_slow": 2},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                    "mscale": 0.707, "mscale_all_dim": 1.0},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                              "attention_factor": 0.8},
}


def hf_config(rule: dict, theta: float = 10000.0, **over) -> tf.LlamaConfig:
    return tf.LlamaConfig(**{**SIZES, **over}, rope_parameters={**rule, "rope_theta": theta})


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("head_dim", [16, 12])
def test_inverse_frequencies_match_hf(name, head_dim):
    hf = hf_config(RULES[name], theta=50000.0, head_dim=head_dim)
    cfg = llama_config(hf.to_dict())
    rope_type = RULES[name]["rope_type"]
    for seq_len in (None, 40, 200):  # dynamic NTK depends on the length; the others must not
        ref_inv, ref_scale = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu", seq_len=seq_len)
        inv, scale = inv_frequencies(cfg, seq_len)
        assert inv.shape == ref_inv.shape
        torch.testing.assert_close(inv, ref_inv, rtol=1e-6, atol=0)
        assert scale == pytest.approx(ref_scale, rel=1e-7)


def test_rules_change_the_frequencies():
    """Guard against a vacuous comparison: each rule really moves the frequencies away from plain RoPE."""
    plain, _ = inv_frequencies(llama_config(tf.LlamaConfig(**SIZES).to_dict()))
    for name, rule in RULES.items():
        inv, scale = inv_frequencies(llama_config(hf_config(rule).to_dict()), 200)
        assert not torch.allclose(inv, plain) or scale != 1.0, name


def test_legacy_rope_scaling_keys():
    """transformers 4.x wrote `rope_theta` and `rope_scaling: {"type": ...}` at the top level."""
    new = hf_config(RULES["yarn-mscale"], theta=20000.0).to_dict()
    legacy = {k: v for k, v in new.items() if k != "rope_parameters"}
    legacy["rope_theta"] = 20000.0
    legacy["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in RULES["yarn-mscale"].items()}
    a, b = llama_config(new), llama_config(legacy)
    assert a.rope_theta == b.rope_theta == 20000.0
    assert a.rope_scaling == b.rope_scaling


@pytest.mark.parametrize("name", ["none", "linear", "dynamic", "llama3", "yarn-mscale"])
def test_cos_sin_and_rotation_match_hf(name):
    rule = RULES.get(name, {"rope_type": "default"})
    hf = hf_config(rule)
    cfg = llama_config(hf.to_dict())
    ref = LlamaRotaryEmbedding(hf)
    ours = RotaryEmbedding(cfg)
    g = torch.Generator().manual_seed(0)
    # positions beyond max_position_embeddings (64) switch dynamic NTK on
    for T in (10, 150):
        pos = torch.arange(T)[None].expand(2, T)
        x = torch.randn(2, T, 4, 16, generator=g)
        rc, rs = ref(x, pos)
        c, s = ours(pos, torch.float32)
        torch.testing.assert_close(c, rc, atol=1e-6, rtol=0)
        torch.testing.assert_close(s, rs, atol=1e-6, rtol=0)
        q, k = torch.randn(2, 4, T, 16, generator=g), torch.randn(2, 2, T, 16, generator=g)
        rq, rk = apply_rotary_pos_emb(q, k, rc, rs)
        torch.testing.assert_close(apply_rope(q, c, s), rq, atol=1e-6, rtol=0)
        torch.testing.assert_close(apply_rope(k, c, s), rk, atol=1e-6, rtol=0)


def test_partial_rotation_leaves_the_tail():
    """With rotary_percentage < 1 only the first rope_dim dims turn (GPT-NeoX / StableLM layout)."""
    cos, sin = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    x = torch.randn(1, 2, 5, 10)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])
    x1, x2 = x[..., :2], x[..., 2:4]
    expect = torch.cat([x1 * cos[:, None, :, :2] - x2 * sin[:, None, :, :2],
                        x2 * cos[:, None, :, 2:] + x1 * sin[:, None, :, 2:]], -1)
    torch.testing.assert_close(y[..., :4], expect)


def test_rotation_preserves_relative_position():
    """The defining property (Su et al. 2021): q_m . k_n depends on m - n only."""
    cfg = llama_config(tf.LlamaConfig(**SIZES).to_dict())
    rope = RotaryEmbedding(cfg)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m: int, n: int) -> float:
        c, s = rope(torch.tensor([[m, n]]), torch.float32)
        return float(apply_rope(q, c[:, :1], s[:, :1]) @ apply_rope(k, c[:, 1:], s[:, 1:]).transpose(-1, -2))

    assert score(7, 3) == pytest.approx(score(30, 26), abs=1e-4)
    assert not math.isclose(score(7, 3), score(7, 5), abs_tol=1e-3)
