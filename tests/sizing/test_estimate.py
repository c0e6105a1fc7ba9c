"""Sizing: parameter counts (by hand, against the reference implementations, against the tensors of
our own model) and the memory estimator (a KV cache by hand, monotonicity, precision order, the
saved-activation model against what autograd really saves, quantised weights against quantize())."""

import math

import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.checkpoints.hf import ADAPTERS
from lmzoo.errors import ConfigError, LmzooError
from lmzoo.nn.transformer import Transformer
from lmzoo.sizing import estimate as E


def test_llama_by_hand():
    cfg = lmzoo.ModelConfig(vocab_size=100, n_layer=2, n_embd=64, n_head=8, n_kv_head=2, intermediate_size=128)
    c = lmzoo.count_params(cfg)
    attn = 64 * (64 + 2 * 16) + 64 * 64
    mlp = 3 * 64 * 128
    assert c.breakdown == {"embeddings": 6400, "attention": 2 * attn, "mlp": 2 * mlp, "experts": 0,
                           "norms": 2 * 2 * 64 + 64, "head": 6400}
    assert c.total == c.active == sum(c.breakdown.values())
    assert c.non_embedding == c.total - 6400


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


# --- memory ----------------------------------------------------------------------------------------


def test_kv_cache_by_hand():
    # Llama-2-7B: 32 layers x 32 kv heads x 128 dims, K and V, bf16: 2*32*32*128*2 = 512 KiB per token
    m = lmzoo.estimate_memory("Llama-2-7B", context=4096, batch=1, dtype="bf16")
    assert m.breakdown["kv_cache"] == 2 * 32 * 32 * 128 * 2 * 4096 == 2 * 1024**3
    # Llama-2-70B: GQA, 8 kv heads of 80 layers -> 2*80*8*128*2 = 320 KiB per token
    m70 = lmzoo.estimate_memory("Llama-2-70B", context=1000, batch=3, dtype="bf16")
    assert m70.breakdown["kv_cache"] == 3 * 1000 * 2 * 80 * 8 * 128 * 2
    # Mistral-7B: the 4096-token sliding window caps the cache
    mis = lmzoo.estimate_memory("Mistral-7B", context=8192, dtype="bf16")
    assert mis.breakdown["kv_cache"] == 2 * 32 * 8 * 128 * 2 * 4096
    # DeepSeek-V3 MLA: one latent of 512 + 64 per token and layer (61 layers)
    ds = lmzoo.estimate_memory("DeepSeek-V3", context=1024, dtype="bf16")
    assert ds.breakdown["kv_cache"] == 1024 * 61 * (512 + 64) * 2
    ex = lmzoo.estimate_memory("DeepSeek-V3", context=1024, dtype="bf16", mla_cache="expanded")
    assert ex.breakdown["kv_cache"] == 1024 * 61 * 128 * (192 + 128) * 2


@pytest.mark.parametrize("task", ["infer", "train", "lora", "qlora"])
def test_monotonic_in_context_and_batch(task):
    """Never decreasing; strictly increasing once context-dependent terms set the peak (full training's
    peak can sit at the optimizer step, where the context does not matter)."""
    totals = [lmzoo.estimate_memory("Llama-3.1-8B", task=task, dtype="bf16", context=c).total
              for c in (256, 1024, 4096, 16384, 65536)]
    assert totals == sorted(totals) and totals[-1] > totals[-2]
    if task != "train":
        assert len(set(totals)) == len(totals)
    assert lmzoo.estimate_memory("Qwen2.5-7B", task=task, context=8192, batch=4).total > \
        lmzoo.estimate_memory("Qwen2.5-7B", task=task, context=8192, batch=1).total


def test_precision_order():
    for name in ("Llama-2-7B", "Mixtral-8x7B", "BLOOM-560M", "Falcon-40B"):
        w = {dt: lmzoo.estimate_memory(name, dtype=dt, context=2048) for dt in ("int4", "int8", "bf16", "fp32")}
        assert w["int4"].breakdown["weights"] < w["int8"].breakdown["weights"] < w["bf16"].breakdown["weights"] \
            < w["fp32"].breakdown["weights"]
        assert w["int4"].total < w["int8"].total < w["bf16"].total < w["fp32"].total
    assert lmzoo.estimate_memory("Llama-2-7B", dtype="fp16").total == lmzoo.estimate_memory("Llama-2-7B", dtype="bf16").total


def test_training_orders_and_checkpointing():
    kw = dict(dtype="bf16", context=2048)
    full = lmzoo.estimate_memory("Llama-2-7B", task="train", **kw)
    lora = lmzoo.estimate_memory("Llama-2-7B", task="lora", **kw)
    qlora = lmzoo.estimate_memory("Llama-2-7B", task="qlora", **kw)
    int4_weights = lmzoo.estimate_memory("Llama-2-7B", task="infer", dtype="int4").breakdown["weights"]
    assert full.total > lora.total > qlora.total > int4_weights
    n = full.params
    assert full.breakdown["optimizer"] == 12 * n and full.breakdown["gradients"] == 2 * n  # ZeRO's 2 + 2 + 12
    ck = lmzoo.estimate_memory("Llama-2-7B", task="lora", activation_checkpointing=True, **kw)
    assert ck.breakdown["activations"] < lora.breakdown["activations"] / 5
    # QLoRA weights: NF4 + double-quantised scales = 4 + 8/64 + 32/(64*256) bits for the block matrices;
    # embedding and head (32000 x 4096 each) stay 16-bit
    table = 2 * 32000 * 4096
    assert qlora.breakdown["weights"] == int((n - table - 65 * 4096) * 4.126953125 / 8 + (table + 65 * 4096) * 2)


def _model(**kw):
    torch.manual_seed(0)
    return Transformer(lmzoo.ModelConfig(**kw))


@pytest.mark.parametrize("mode,group", [("int8", None), ("int4", 32), ("int8", 32)])
@pytest.mark.parametrize("tied", [False, True])
def test_quantised_weight_bytes_match_quantize(mode, group, tied):
    from lmzoo.quant.layers import quantize

    m = _model(vocab_size=96, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128,
               tie_embeddings=tied, qkv_bias=True)
    quantize(m, mode=mode, group_size=group)
    real = sum(t.numel() * t.element_size() for t in m.state_dict().values())
    inv = E.inventory(m.config)
    pred = E._weights_bytes(inv, mode, 4, group=group if group or mode == "int4" else None, tied=tied, vocab=96, embed=64)
    assert pred == real


SHAPES = {
    "llama": dict(vocab_size=100, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=160, max_seq_len=128),
    "gpt2": dict(vocab_size=100, n_embd=64, n_head=4, intermediate_size=256, max_seq_len=128, norm="layernorm",
                 mlp="gelu_tanh", position="learned", qkv_bias=True, attn_out_bias=True, mlp_bias=True,
                 tie_embeddings=True),
    "gpt-neox": dict(vocab_size=100, n_embd=64, n_head=4, intermediate_size=256, max_seq_len=128, norm="layernorm",
                     mlp="gelu", rotary_percentage=0.25, parallel_residual=True, qkv_bias=True, attn_out_bias=True,
                     mlp_bias=True),
    "gpt-j": dict(vocab_size=100, n_embd=64, n_head=4, intermediate_size=256, max_seq_len=128, norm="layernorm",
                  mlp="gelu", rotary_percentage=0.25, parallel_residual=True, shared_norm=True, mlp_bias=True),
    "alibi": dict(vocab_size=100, n_embd=64, n_head=4, intermediate_size=160, max_seq_len=128, position="alibi"),
    "mixtral": dict(vocab_size=100, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96, max_seq_len=128,
                    n_experts=4, n_experts_per_tok=2),
}


def _saved_per_token(cfg, B=2, T=64) -> float:
    """Elements autograd keeps for backward (unique storages, parameters excluded) per token."""
    torch.manual_seed(0)
    m = Transformer(cfg)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(torch.randint(0, cfg.vocab_size, (B, T)))
    return sum(storages.values()) / 4 / (B * T)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_saved_activations_per_layer_match_autograd(shape):
    one = lmzoo.ModelConfig(n_layer=1, **SHAPES[shape])
    per_layer = _saved_per_token(one.replace(n_layer=2)) - _saved_per_token(one)
    pred = E._train_layer_elems(E.resolve_arch(one), 0, task="train", lora_targets="all")
    if one.n_experts:  # routing bookkeeping (top-k ids and values) is approximated
        assert pred == pytest.approx(per_layer, rel=0.02)
    else:
        assert pred == per_layer


def test_gpus_needed_and_sizes():
    assert E.parse_size("24GB") == E.parse_size("24 GiB") == 24 * 1024**3
    assert E.parse_size("1.5TB") == 1.5 * 1024**4
    assert E.gpus_needed(10 * 1024**3, "24GB") == 1
    m = lmzoo.estimate_memory("Llama-2-70B", dtype="bf16", context=4096)
    n = lmzoo.gpus_needed(m.total, "80GB")
    assert n == math.ceil((m.total - 0.5 * 1024**3) / (79.5 * 1024**3)) >= 2
    for bad in ("0GB", "-3", "lots", "24XB"):
        with pytest.raises(ConfigError):
            E.parse_size(bad)


@pytest.mark.parametrize("kw,word", [
    (dict(context=-1), "context"), (dict(context=0), "context"), (dict(batch=0), "batch"),
    (dict(dtype="fp8"), "dtype"), (dict(task="pretrain"), "task"), (dict(task="train", dtype="int4"), "qlora"),
])
def test_bad_input_is_one_clear_error(kw, word):
    with pytest.raises(LmzooError, match=word):
        lmzoo.estimate_memory("Llama-2-7B", **kw)
