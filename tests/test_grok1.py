"""Grok-1 against tests/refs/grok1_ref.py, an independent implementation of xai-org/grok-1's JAX model.py:
sandwich norms, soft-capped attention logits, embedding/logit multipliers, top-2 of 8 GeGLU experts
with un-renormalised softmax gates, GQA (6 query heads over 2 kv heads here)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import lmzoo
from tests.helpers import ATOL, cache_vs_recompute, greedy_ours, left_pad, random_ids
from tests.refs import grok1_ref as ref

V = 128
CFG = {
    "model_type": "grok-1", "architectures": ["Grok1ModelForCausalLM"], "vocab_size": V, "hidden_size": 48,
    "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
    "attn_output_multiplier": 0.35, "embedding_multiplier_scale": 6.9, "output_multiplier_scale": [0.577],
    "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000, "num_local_experts": 4,
    "num_experts_per_tok": 2, "hidden_act": "gelu", "tie_word_embeddings": False, "torch_dtype": "float32",
}


def _ref_cfg():
    return CFG | {"output_multiplier_scale": CFG["output_multiplier_scale"][0]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d, f, E = 48, 40, 4
    shapes = {"embedding.weight": (V, d), "norm.weight": (d,)}
    for i in range(2):
        p = f"layers.{i}."
        shapes |= {p + f"norm{n}.weight": (d,) for n in range(1, 5)}
        shapes |= {p + "attention.q_proj.weight": (d, d), p + "attention.k_proj.weight": (16, d),
                   p + "attention.v_proj.weight": (16, d), p + "attention.out_proj.weight": (d, d),
                   p + "mlp.gating.router_weights.weight": (E, d)}
        for e in range(E):
            shapes |= {p + f"mlp.experts.{e}.w1.weight": (f, d), p + f"mlp.experts.{e}.v.weight": (f, d),
                       p + f"mlp.experts.{e}.dense.weight": (d, f)}
    g = torch.Generator().manual_seed(0)
    state = {k: (1.0 if "norm" in k else 0.0) + torch.randn(s, generator=g) * (0.2 if "norm" in k else 0.3)
             for k, s in shapes.items()}
    path = tmp_path_factory.mktemp("grok1")
    save_file(state, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(CFG))
    return path, state


def test_config(checkpoint):
    c = lmzoo.from_pretrained(checkpoint[0]).config
    assert (c.sandwich_norm, c.attn_logit_softcap, c.n_experts, c.moe_renormalize, c.mlp) == (True, 30.0, 4, False, "geglu")
    assert (c.embed_scale, c.logit_scale, c.attn_scale) == (6.9, 0.577, 0.35)


def test_logits_and_greedy_match_reference(checkpoint):
    path, state = checkpoint
    m = lmzoo.from_pretrained(path)
    ids = random_ids(V, (2, 24))
    with torch.no_grad():
        ours, want = m(ids), ref.forward(state, _ref_cfg(), ids)
    assert (ours - want).abs().max() <= ATOL
    # the soft cap is active: some raw scaled logits exceed what tanh lets through unchanged
    assert torch.equal(greedy_ours(m, ids[:, :6], 20), ref.greedy(state, _ref_cfg(), ids[:, :6], 20))


def test_cache_and_padded_batch(checkpoint):
    path, state = checkpoint
    m = lmzoo.from_pretrained(path)
    assert cache_vs_recompute(m, random_ids(V, (2, 30), seed=3), n_prefill=7) <= ATOL
    rows = [random_ids(V, (1, 5), seed=4)[0], random_ids(V, (1, 11), seed=5)[0]]
    ids, mask = left_pad(rows)
    batch = greedy_ours(m, ids, 15, attention_mask=mask)
    for r, row in zip(batch, rows):
        assert torch.equal(r, ref.greedy(state, _ref_cfg(), row[None], 15)[0])
