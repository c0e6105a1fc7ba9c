"""LLaMA-shaped families: Qwen2/3, Baichuan (7B/13B, Baichuan2), Qwen (v1), Phi-3, GLM-4/ChatGLM2/3,
StableLM."""

from __future__ import annotations

from lmzoo.checkpoints.adapters.common import (
    LLAMA_WEIGHTS,
    L,
    _rotary_fraction,
    _token_ids,
    flag,
    llama_config,
    per_head_qkv,
    rope_pairs_to_halves,
)
from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import UnsupportedModelError


def qwen2_config(hf: dict) -> ModelConfig:
    # Qwen1.5/2/2.5: bias on q, k, v only
    return llama_config(hf, qkv_bias=True, attn_out_bias=False)


def qwen3_config(hf: dict) -> ModelConfig:
    bias = flag(hf, "attention_bias", False)
    return llama_config(hf, qk_norm=True, qkv_bias=bias, attn_out_bias=bias)

BAICHUAN_WEIGHTS = {
    **LLAMA_WEIGHTS,
    "layers.{i}.attn.qkv.weight": (L + "self_attn.W_pack.weight",),
}

def qwen_config(hf: dict) -> ModelConfig:
    """Qwen (first generation, `qwen` remote code): LLaMA-like with fused c_attn (q/k/v bias), an MLP
    whose `intermediate_size` counts both halves, and RoPE on rotary_pct of each head.
    Past `seq_length` its inference-time context extension takes over: use_dynamic_ntk (RoPE base
    scaled by an NTK alpha fixed at prefill, kind "ntk_alpha") and use_logn_attn (queries scaled by
    log_{seq_length}(position)). The original's log-n table stops at 32,767 positions, so does the
    context; with both off the context is seq_length."""
    d = hf["hidden_size"]
    L0 = hf.get("seq_length", 2048)
    ntk, logn = flag(hf, "use_dynamic_ntk"), flag(hf, "use_logn_attn")
    context = L0
    if logn:
        context = 32767
    elif ntk:
        context = max(hf.get("max_position_embeddings") or 32768, L0)
    return ModelConfig(
        name=hf.get("_name_or_path") or "qwen",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"] // 2,
        head_dim=hf.get("kv_channels") or d // hf["num_attention_heads"],
        max_seq_len=context, norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        mlp="swiglu", qkv_bias=True, attn_out_bias=False,
        rope_scaling=RopeScaling(kind="ntk_alpha", original_max_position=L0) if ntk else RopeScaling(),
        logn_attn_base=L0 if logn else None,
        rope_theta=float(hf.get("rotary_emb_base", 10000)), rotary_percentage=float(hf.get("rotary_pct", 1.0)),
        tie_embeddings=flag(hf, "tie_word_embeddings", False), **_token_ids(hf),
    )


Q = "transformer.h.{i}."
QWEN_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "lm_head.weight": ("lm_head.weight",),
    "layers.{i}.attn_norm.weight": (Q + "ln_1.weight",),
    "layers.{i}.mlp_norm.weight": (Q + "ln_2.weight",),
    "layers.{i}.attn.qkv.weight": (Q + "attn.c_attn.weight",),
    "layers.{i}.attn.qkv.bias": (Q + "attn.c_attn.bias",),
    "layers.{i}.attn.o.weight": (Q + "attn.c_proj.weight",),
    # out = c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection
    "layers.{i}.mlp.gate_up.weight": (Q + "mlp.w2.weight", Q + "mlp.w1.weight"),
    "layers.{i}.mlp.down.weight": (Q + "mlp.c_proj.weight",),
}

def baichuan_config(hf: dict) -> ModelConfig:
    """Baichuan-7B / Baichuan2-7B: LLaMA with fused W_pack. Baichuan-13B / Baichuan2-13B declare
    `model_max_length` instead of `max_position_embeddings` and use ALiBi instead of RoPE."""
    if "max_position_embeddings" in hf:
        return llama_config(hf)
    return llama_config({**hf, "max_position_embeddings": hf.get("model_max_length", 4096)}, position="alibi")


def baichuan2_norm_head(t, cfg: ModelConfig):
    """Baichuan2's NormHead divides every LM-head row by its L2 norm at inference; folded in at load."""
    import torch

    return torch.nn.functional.normalize(t.float(), dim=-1).to(t.dtype)


def baichuan_transforms(hf: dict) -> dict:
    # Baichuan2 checkpoints carry its training setting `z_loss_weight`; Baichuan (1) ones do not
    return {"lm_head.weight": baichuan2_norm_head} if "z_loss_weight" in hf else {}

def phi3_config(hf: dict) -> ModelConfig:
    """Phi-3: LLaMA block with fused qkv / gate_up; the 128k models use LongRoPE."""
    return llama_config(hf, rotary_percentage=_rotary_fraction(hf))


PHI3_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if "qkv" not in k and "gate_up" not in k},
    "layers.{i}.attn.qkv.weight": (L + "self_attn.qkv_proj.weight",),
    "layers.{i}.mlp.gate_up.weight": (L + "mlp.gate_up_proj.weight",),
}

def glm_config(hf: dict) -> ModelConfig:
    """GLM-4 / ChatGLM in transformers' `glm` layout: LLaMA block with q/k/v biases, fused gate_up,
    pair-interleaved RoPE on the first half of each head (re-ordered at load, see rope_pairs_to_halves)."""
    bias = flag(hf, "attention_bias", True)
    return llama_config(hf, qkv_bias=bias, attn_out_bias=False, rotary_percentage=_rotary_fraction(hf, 0.5))


GLM_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if "gate_up" not in k},
    "layers.{i}.mlp.gate_up.weight": (L + "mlp.gate_up_proj.weight",),
}
GLM_TRANSFORMS = {"layers.{i}.attn.qkv.weight": rope_pairs_to_halves,
                  "layers.{i}.attn.qkv.bias": rope_pairs_to_halves}


def is_chatglm_v1(hf: dict) -> bool:
    """ChatGLM-6B (the first release) shares model_type 'chatglm' with ChatGLM2/3 and GLM-4 but is a
    different network; its config has `inner_hidden_size` / `position_encoding_2d` instead of
    `ffn_hidden_size` / `multi_query_attention`."""
    return "ffn_hidden_size" not in hf and ("inner_hidden_size" in hf or "position_encoding_2d" in hf)


def chatglm_v1_config(hf: dict) -> ModelConfig:
    """ChatGLM-6B: GLM proper -- LayerNorm with DeepNorm-style scaled residuals (alpha = sqrt(2L)),
    per-head fused qkv with biases, 2-D RoPE (or 1-D with position_encoding_2d=false), the prefix-LM
    mask up to <sop>, plain tanh-GELU MLP, head tied to the embeddings."""
    if hf.get("pre_seq_len"):
        raise UnsupportedModelError(f"ChatGLM-6B P-tuning checkpoints (pre_seq_len={hf['pre_seq_len']}) are not "
                                    "supported; merge or drop the prefix encoder first")
    if hf.get("quantization_bit"):
        raise UnsupportedModelError(f"ChatGLM-6B checkpoints quantised by THUDM's kernels (quantization_bit="
                                    f"{hf['quantization_bit']}) are not supported; load the fp16 release")
    if not hf.get("position_encoding_2d", True):
        raise UnsupportedModelError("ChatGLM-6B with position_encoding_2d=false (1-D positions) is not supported; "
                                    "the released model uses 2-D positions")
    L = hf["num_layers"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "chatglm-6b",
        vocab_size=hf["vocab_size"], n_layer=L, n_embd=hf["hidden_size"], n_head=hf["num_attention_heads"],
        intermediate_size=hf.get("inner_hidden_size") or 4 * hf["hidden_size"],
        max_seq_len=hf.get("max_sequence_length", 2048),
        norm="layernorm", norm_eps=hf.get("layernorm_epsilon", 1e-5),
        norm_placement="deepnorm", deepnorm_alpha=(2 * L) ** 0.5,
        mlp="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True,
        position="rope_2d", rope_theta=10000.0, rope_table_dtype="float16",
        prefix_lm=True, mask_token_ids=(hf.get("gmask_token_id", 130001), hf.get("mask_token_id", 130000)),
        tie_embeddings=True, **_token_ids(hf),
    )


G1 = "transformer.layers.{i}."
CHATGLM_V1_WEIGHTS = {
    "embed.weight": ("transformer.word_embeddings.weight",),
    "norm.weight": ("transformer.final_layernorm.weight",),
    "norm.bias": ("transformer.final_layernorm.bias",),
    **{f"layers.{{i}}.{ours}.{p}": (G1 + f"{theirs}.{p}",) for p in ("weight", "bias") for ours, theirs in (
        ("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
        ("attn.qkv", "attention.query_key_value"), ("attn.o", "attention.dense"),
        ("mlp.gate_up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h"))},
}
CHATGLM_V1_TRANSFORMS = {"layers.{i}.attn.qkv.weight": per_head_qkv, "layers.{i}.attn.qkv.bias": per_head_qkv}


def chatglm_any_config(hf: dict) -> ModelConfig:
    return chatglm_v1_config(hf) if is_chatglm_v1(hf) else chatglm_config(hf)


def chatglm_any_weights(hf: dict) -> dict:
    return CHATGLM_V1_WEIGHTS if is_chatglm_v1(hf) else CHATGLM_WEIGHTS


def chatglm_any_transforms(hf: dict) -> dict:
    return CHATGLM_V1_TRANSFORMS if is_chatglm_v1(hf) else GLM_TRANSFORMS


def chatglm_config(hf: dict) -> ModelConfig:
    """ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B in THUDM's original (remote-code) layout: the same network
    as `glm` — multi-query groups, q/k/v bias, RoPE on half of each head in adjacent pairs, RMSNorm."""
    if not hf.get("rmsnorm", True) or hf.get("apply_residual_connection_post_layernorm") or \
            not hf.get("post_layer_norm", True):
        raise UnsupportedModelError("this chatglm variant (LayerNorm / post-LN residual) is not supported; "
                                    "ChatGLM2/3 and GLM-4 are")
    H = hf["num_attention_heads"]
    kv = hf["multi_query_group_num"] if hf.get("multi_query_attention") else H
    bias = flag(hf, "add_qkv_bias", True)
    return ModelConfig(
        name=hf.get("_name_or_path") or "chatglm",
        vocab_size=hf.get("padded_vocab_size") or hf["vocab_size"], n_layer=hf["num_layers"],
        n_embd=hf["hidden_size"], n_head=H, n_kv_head=kv, head_dim=hf.get("kv_channels"),
        intermediate_size=hf["ffn_hidden_size"], max_seq_len=hf.get("seq_length", 2048),
        norm="rmsnorm", norm_eps=hf.get("layernorm_epsilon", 1e-5), mlp="swiglu",
        mlp_bias=flag(hf, "add_bias_linear", False), qkv_bias=bias,
        attn_out_bias=flag(hf, "add_bias_linear", False),
        rope_theta=10000.0 * float(hf.get("rope_ratio", 1.0)), rotary_percentage=0.5,
        tie_embeddings=False, **_token_ids(hf),
    )


C = "transformer.encoder.layers.{i}."
CHATGLM_WEIGHTS = {
    "embed.weight": ("transformer.embedding.word_embeddings.weight",),
    "norm.weight": ("transformer.encoder.final_layernorm.weight",),
    "lm_head.weight": ("transformer.output_layer.weight",),
    "layers.{i}.attn_norm.weight": (C + "input_layernorm.weight",),
    "layers.{i}.mlp_norm.weight": (C + "post_attention_layernorm.weight",),
    "layers.{i}.attn.qkv.weight": (C + "self_attention.query_key_value.weight",),
    "layers.{i}.attn.qkv.bias": (C + "self_attention.query_key_value.bias",),
    "layers.{i}.attn.o.weight": (C + "self_attention.dense.weight",),
    "layers.{i}.mlp.gate_up.weight": (C + "mlp.dense_h_to_4h.weight",),
    "layers.{i}.mlp.down.weight": (C + "mlp.dense_4h_to_h.weight",),
}

def stablelm_config(hf: dict) -> ModelConfig:
    """StableLM (`stablelm`): LLaMA block with LayerNorm, partial rotary, optional q/k/v bias, optional
    parallel residual with one shared norm."""
    parallel = flag(hf, "use_parallel_residual", False)
    return llama_config(hf, norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
                        qk_norm=flag(hf, "qk_layernorm", False), qk_norm_kind="layernorm_per_head",
                        qkv_bias=flag(hf, "use_qkv_bias", False), attn_out_bias=False,
                        rotary_percentage=_rotary_fraction(hf), parallel_residual=parallel, shared_norm=parallel)


def stablelm_weights(hf: dict) -> dict[str, tuple[str, ...]]:
    H, KV = hf["num_attention_heads"], hf.get("num_key_value_heads") or hf["num_attention_heads"]
    return {
        **LLAMA_WEIGHTS,
        "norm.bias": ("model.norm.bias",),
        "layers.{i}.attn_norm.bias": (L + "input_layernorm.bias",),
        "layers.{i}.mlp_norm.bias": (L + "post_attention_layernorm.bias",),
        # per-head norms: one weight vector per head, stacked
        "layers.{i}.attn.q_norm.weight": tuple(L + f"self_attn.q_layernorm.norms.{h}.weight" for h in range(H)),
        "layers.{i}.attn.k_norm.weight": tuple(L + f"self_attn.k_layernorm.norms.{h}.weight" for h in range(KV)),
    }
