"""Parameter counts: by hand on known shapes, and against the reference implementations' own counts."""

import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.io.hf import ADAPTERS


def test_llama_by_hand():
    cfg = lmzoo.ModelConfig(vocab_size=100, n_layer=2, n_embd=64, n_head=8, n_kv_head=2, intermediate_size=128)
    c = lmzoo.count_params(cfg)
    attn = 64 * (64 + 2 * 16) + 64 * 64
    mlp = 3 * 64 * 128
    assert c.breakdown == {"embeddings": 6400, "attention": 2 * attn, "mlp": 2 * mlp, "norms": 2 * 2 * 64 + 64,
                           "head": 6400}
    assert c.total == c.active == sum(c.breakdown.values())


def test_tied_head_counts_once():
    cfg = lmzoo.ModelConfig(vocab_size=100, n_layer=1, n_embd=32, n_head=4, intermediate_size=64, tie_embeddings=True)
    assert lmzoo.count_params(cfg).breakdown["head"] == 0


@pytest.mark.parametrize("cfg_cls,model_cls,over,model_type", [
    (tf.MixtralConfig, tf.MixtralForCausalLM, dict(num_local_experts=8, num_experts_per_tok=2), "mixtral"),
    (tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM,
     dict(num_hidden_layers=3, moe_intermediate_size=24, q_lora_rank=16, kv_lora_rank=12, qk_nope_head_dim=8,
          qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
          n_group=4, topk_group=2, first_k_dense_replace=1, pad_token_id=0), "deepseek_v3"),
    (tf.BloomConfig, tf.BloomForCausalLM, dict(n_layer=2, n_head=6), "bloom"),
])
def test_total_equals_reference_and_active_is_smaller(cfg_cls, model_cls, over, model_type):
    base = dict(vocab_size=101, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                num_key_value_heads=6)
    hf = cfg_cls(**{**base, **over})
    with torch.device("meta"):
        ref = model_cls(hf)
    ref_total = sum(p.numel() for p in ref.parameters())  # transformers counts tied weights once
    ours = lmzoo.count_params(ADAPTERS[model_type].config(hf.to_dict()))
    assert ours.total == ref_total
    if getattr(hf, "num_experts_per_tok", None):
        assert ours.active < ours.total
    else:
        assert ours.active == ours.total
