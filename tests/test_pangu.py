"""PanGu-alpha against tests/refs/pangu_ref.py (its `gpt_pangu` PyTorch port): the top query layer, whose
queries are learned position embeddings, with the final LayerNorm before it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import lmzoo
from tests.helpers import ATOL, cache_vs_recompute, greedy_ours, left_pad, random_ids
from tests.refs import pangu_ref as ref

V = 120
CFG = {"model_type": "gpt_pangu", "architectures": ["GPTPanguForCausalLM"], "vocab_size": V, "hidden_size": 48,
       "num_layers": 3, "num_heads": 6, "intermediate_size": 96, "max_position_embeddings": 64,
       "layer_norm_epsilon": 1e-5, "activation_function": "gelu", "scale_attn_weights": True,
       "torch_dtype": "float32"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d, f = 48, 96
    shapes = {"transformer.wte.weight": (V, d), "transformer.wpe.weight": (64, d), "transformer.wqe.weight": (64, d),
              "transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)}
    for i in range(3):
        p = f"transformer.h.{i}."
        for n in ("ln_1", "ln_2"):
            shapes |= {p + n + ".weight": (d,), p + n + ".bias": (d,)}
        for n in ("q_proj", "k_proj", "v_proj", "c_proj"):
            shapes |= {p + f"attn.{n}.weight": (d, d), p + f"attn.{n}.bias": (d,)}
        shapes |= {p + "mlp.c_fc.weight": (f, d), p + "mlp.c_fc.bias": (f,), p + "mlp.c_proj.weight": (d, f),
                   p + "mlp.c_proj.bias": (d,)}
    g = torch.Generator().manual_seed(0)
    state = {k: (1.0 if ("ln_" in k and k.endswith("weight")) else 0.0) + torch.randn(s, generator=g) * 0.3
             for k, s in shapes.items()}
    path = tmp_path_factory.mktemp("pangu")
    buffers = {f"transformer.h.{i}.attn.bias": torch.ones(1, 1, 64, 64).tril() for i in range(3)}
    save_file(state | {"lm_head.weight": state["transformer.wte.weight"].clone()} | buffers,
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(CFG))
    return path, state


def test_logits_greedy_cache_batch(checkpoint):
    path, state = checkpoint
    m = lmzoo.from_pretrained(path)
    assert m.config.query_layer and m.lm_head.weight is m.embed.weight
    ids = random_ids(V, (2, 20))
    with torch.no_grad():
        assert (m(ids) - ref.forward(state, CFG, ids)).abs().max() <= ATOL
    assert torch.equal(greedy_ours(m, ids[:, :5], 20), ref.greedy(state, CFG, ids[:, :5], 20))
    assert cache_vs_recompute(m, random_ids(V, (2, 30), seed=3), n_prefill=7) <= ATOL
    rows = [random_ids(V, (1, 4), seed=4)[0], random_ids(V, (1, 9), seed=5)[0]]
    ids2, mask = left_pad(rows)
    batch = greedy_ours(m, ids2, 12, attention_mask=mask)
    for r, row in zip(batch, rows):
        assert torch.equal(r, ref.greedy(state, CFG, row[None], 12)[0])


def test_query_embedding_matters(checkpoint):
    """Not a plain GPT: the last layer's queries come from the query-position table."""
    path, _ = checkpoint
    m = lmzoo.from_pretrained(path)
    ids = random_ids(V, (1, 10))
    with torch.no_grad():
        a = m(ids)
        m.query_embed.weight.mul_(0.5)
        b = m(ids)
    assert (a - b).abs().max() > 1e-3
