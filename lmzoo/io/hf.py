"""Hugging Face checkpoints -> lmzoo: one adapter per `model_type`.

An adapter is two things:
  * `config(hf: dict) -> ModelConfig`   translate config.json into our named switches
  * `weights`: canonical name -> the HF tensor names that make it, concatenated along dim 0
     (how q/k/v and gate/up are fused). `{i}` stands for the layer index.

Adding a family that reuses LLaMA's tensor names is a row in `ADAPTERS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import UnsupportedModelError

L = "model.layers.{i}."
LLAMA_WEIGHTS: dict[str, tuple[str, ...]] = {
    "embed.weight": ("model.embed_tokens.weight",),
    "norm.weight": ("model.norm.weight",),
    "lm_head.weight": ("lm_head.weight",),
    "layers.{i}.attn_norm.weight": (L + "input_layernorm.weight",),
    "layers.{i}.mlp_norm.weight": (L + "post_attention_layernorm.weight",),
    "layers.{i}.attn.qkv.weight": tuple(L + f"self_attn.{p}_proj.weight" for p in "qkv"),
    "layers.{i}.attn.qkv.bias": tuple(L + f"self_attn.{p}_proj.bias" for p in "qkv"),
    "layers.{i}.attn.o.weight": (L + "self_attn.o_proj.weight",),
    "layers.{i}.attn.o.bias": (L + "self_attn.o_proj.bias",),
    "layers.{i}.attn.q_norm.weight": (L + "self_attn.q_norm.weight",),
    "layers.{i}.attn.k_norm.weight": (L + "self_attn.k_norm.weight",),
    "layers.{i}.mlp.gate_up.weight": (L + "mlp.gate_proj.weight", L + "mlp.up_proj.weight"),
    "layers.{i}.mlp.gate_up.bias": (L + "mlp.gate_proj.bias", L + "mlp.up_proj.bias"),
    "layers.{i}.mlp.down.weight": (L + "mlp.down_proj.weight",),
    "layers.{i}.mlp.down.bias": (L + "mlp.down_proj.bias",),
}

# Baichuan-7B: LLaMA with q, k, v stored fused as W_pack (3d, d), rows in q, k, v order.
BAICHUAN_WEIGHTS = {
    **LLAMA_WEIGHTS,
    "layers.{i}.attn.qkv.weight": (L + "self_attn.W_pack.weight",),
}


def _rope_scaling(hf: dict, theta_default: float = 10000.0) -> tuple[float, RopeScaling]:
    """Read RoPE theta and scaling from either the transformers 4.x (`rope_theta`, `rope_scaling`)
    or the 5.x (`rope_parameters`) layout."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    params = {**legacy, **params}
    theta = float(params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", theta_default))))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    max_pos = hf.get("max_position_embeddings")
    if kind == "default":
        return theta, RopeScaling()
    factor = params.get("factor")
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(factor))
    if kind == "dynamic":
        # HF's dynamic NTK rescales relative to max_position_embeddings (the trained context)
        return theta, RopeScaling(kind="dynamic", factor=float(factor), original_max_position=max_pos)
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3",
            factor=float(factor),
            original_max_position=int(params["original_max_position_embeddings"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        )
    if kind == "yarn":
        orig = int(params.get("original_max_position_embeddings") or max_pos)
        if factor is None:
            factor = max_pos / orig
        attention_factor = params.get("attention_factor")
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        if attention_factor is None and mscale and mscale_all:
            import math

            def g(s: float, m: float) -> float:
                return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

            attention_factor = g(factor, mscale) / g(factor, mscale_all)
        return theta, RopeScaling(
            kind="yarn",
            factor=float(factor),
            original_max_position=orig,
            beta_fast=float(params.get("beta_fast") or 32),
            beta_slow=float(params.get("beta_slow") or 1),
            attention_factor=None if attention_factor is None else float(attention_factor),
            truncate=bool(params.get("truncate", True)),
        )
    if kind in ("longrope", "su"):
        orig = int(params.get("original_max_position_embeddings") or hf.get("original_max_position_embeddings"))
        return theta, RopeScaling(
            kind="longrope", factor=float(factor or max_pos / orig), original_max_position=orig,
            short_factor=tuple(params["short_factor"]), long_factor=tuple(params["long_factor"]),
            attention_factor=params.get("attention_factor"),
        )
    raise UnsupportedModelError(
        f"rope scaling type {kind!r} is not supported; supported: default, linear, dynamic, llama3, yarn, longrope"
    )


def _token_ids(hf: dict) -> dict[str, Any]:
    eos = hf.get("eos_token_id")
    return {
        "bos_token_id": hf.get("bos_token_id"),
        "eos_token_id": tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ()),
        "pad_token_id": hf.get("pad_token_id"),
    }


def _windowed_layers(hf: dict) -> tuple[int | None, tuple[int, ...] | None]:
    """Sliding window and the layers that use it (Mistral: all; Qwen2/3: `layer_types` or
    layers >= max_window_layers when use_sliding_window is set)."""
    window = hf.get("sliding_window")
    if "use_sliding_window" in hf and not hf["use_sliding_window"]:
        return None, None
    if not window:
        return None, None
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types:
        layers = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        return (window, layers) if layers else (None, None)
    if "max_window_layers" in hf:
        layers = tuple(range(hf["max_window_layers"], n))
        return (window, layers) if layers else (None, None)
    return window, None


def llama_config(hf: dict, **overrides: Any) -> ModelConfig:
    theta, scaling = _rope_scaling(hf)
    window, window_layers = _windowed_layers(hf)
    kw: dict[str, Any] = dict(
        name=hf.get("_name_or_path") or hf.get("model_type", "llama"),
        vocab_size=hf["vocab_size"],
        n_layer=hf["num_hidden_layers"],
        n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        head_dim=hf.get("head_dim") or None,
        intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        mlp="swiglu",
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qkv_bias=bool(hf.get("attention_bias", False)),
        attn_out_bias=bool(hf.get("attention_bias", False)),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        sliding_window_layers=window_layers,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_token_ids(hf),
    )
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported for this family; expected 'silu'")
    if scaling.kind == "dynamic":
        # the trained context stretched by `factor` is what dynamic NTK is meant to reach
        kw["max_seq_len"] = int(kw["max_seq_len"] * scaling.factor)
    kw.update(overrides)
    return ModelConfig(**kw)


def qwen2_config(hf: dict) -> ModelConfig:
    # Qwen1.5/2/2.5: bias on q, k, v only
    return llama_config(hf, qkv_bias=True, attn_out_bias=False)


def qwen3_config(hf: dict) -> ModelConfig:
    bias = bool(hf.get("attention_bias", False))
    return llama_config(hf, qk_norm=True, qkv_bias=bias, attn_out_bias=bias)


def mixtral_config(hf: dict) -> ModelConfig:
    """Mixtral: Mistral with every MLP a sparse MoE, softmax top-k renormalised."""
    return llama_config(hf, n_experts=hf["num_local_experts"], n_experts_per_tok=hf["num_experts_per_tok"],
                        moe_intermediate_size=hf["intermediate_size"], moe_renormalize=True)


def _qwen_moe(hf: dict, **overrides: Any) -> ModelConfig:
    n = hf["num_hidden_layers"]
    step, dense = hf.get("decoder_sparse_step", 1) or 1, set(hf.get("mlp_only_layers") or [])
    moe = tuple(i for i in range(n) if i not in dense and (i + 1) % step == 0)
    return llama_config(hf, n_experts=hf.get("num_experts") or hf["num_local_experts"],
                        n_experts_per_tok=hf["num_experts_per_tok"],
                        moe_intermediate_size=hf["moe_intermediate_size"],
                        moe_renormalize=bool(hf.get("norm_topk_prob", False)),
                        moe_layers=None if len(moe) == n else moe, **overrides)


def qwen2_moe_config(hf: dict) -> ModelConfig:
    """Qwen1.5-MoE / Qwen2-MoE: Qwen2 attention; routed experts plus a shared expert behind a sigmoid gate."""
    return _qwen_moe(hf, qkv_bias=True, attn_out_bias=False,
                     shared_expert_size=hf.get("shared_expert_intermediate_size") or 0)


def qwen3_moe_config(hf: dict) -> ModelConfig:
    bias = bool(hf.get("attention_bias", False))
    return _qwen_moe(hf, qk_norm=True, qkv_bias=bias, attn_out_bias=bias)


B_MOE = L + "block_sparse_moe."
MIXTRAL_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if ".mlp." not in k},
    "layers.{i}.mlp.router.weight": (B_MOE + "gate.weight",),
    "layers.{i}.mlp.experts.{e}.gate_up.weight": (B_MOE + "experts.{e}.w1.weight", B_MOE + "experts.{e}.w3.weight"),
    "layers.{i}.mlp.experts.{e}.down.weight": (B_MOE + "experts.{e}.w2.weight",),
}
QWEN_MOE_WEIGHTS = {
    **LLAMA_WEIGHTS,  # dense layers keep the LLaMA MLP names
    "layers.{i}.mlp.router.weight": (L + "mlp.gate.weight",),
    "layers.{i}.mlp.experts.{e}.gate_up.weight": (L + "mlp.experts.{e}.gate_proj.weight",
                                                  L + "mlp.experts.{e}.up_proj.weight"),
    "layers.{i}.mlp.experts.{e}.down.weight": (L + "mlp.experts.{e}.down_proj.weight",),
    "layers.{i}.mlp.shared.gate_up.weight": (L + "mlp.shared_expert.gate_proj.weight",
                                             L + "mlp.shared_expert.up_proj.weight"),
    "layers.{i}.mlp.shared.down.weight": (L + "mlp.shared_expert.down_proj.weight",),
    "layers.{i}.mlp.shared_gate.weight": (L + "mlp.shared_expert_gate.weight",),
}


def deepseek_config(hf: dict) -> ModelConfig:
    """DeepSeek-V2 / V2-Lite / V3 / R1: MLA attention; DeepSeekMoE after the first
    first_k_dense_replace dense layers — shared experts, group-limited routing, V3's sigmoid scores
    with a selection-only bias, routed scaling."""
    import math

    theta, scaling = _rope_scaling(hf)
    qk_dim = hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"]
    scale = qk_dim ** -0.5
    params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    if scaling.kind == "yarn" and params.get("mscale_all_dim"):
        m = 0.1 * params["mscale_all_dim"] * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0
        scale *= m * m  # YaRN's temperature applied to the softmax as well (DeepSeek)
    n, first_dense = hf["num_hidden_layers"], hf.get("first_k_dense_replace", 0) or 0
    freq = hf.get("moe_layer_freq", 1) or 1
    moe = tuple(i for i in range(first_dense, n) if i % freq == 0)
    v3 = hf.get("scoring_func", "softmax" if hf.get("model_type") == "deepseek_v2" else "sigmoid") == "sigmoid" \
        or hf.get("topk_method") == "noaux_tc"
    groups = hf.get("n_group") or 1
    if not v3 and hf.get("topk_method", "greedy") == "greedy":
        groups = 1
    E = hf.get("n_routed_experts") or hf.get("num_local_experts") or hf.get("num_experts") or 0
    return llama_config(
        hf, attention="mla", q_lora_rank=hf.get("q_lora_rank") or None, kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"], head_dim=qk_dim, n_kv_head=hf["num_attention_heads"],
        qkv_bias=bool(hf.get("attention_bias", False)), attn_out_bias=bool(hf.get("attention_bias", False)),
        attn_scale=scale, rope_theta=theta, rope_scaling=scaling,
        n_experts=E, n_experts_per_tok=hf.get("num_experts_per_tok") or 0,
        moe_intermediate_size=hf.get("moe_intermediate_size"), moe_layers=moe if E else None,
        moe_renormalize=bool(v3 and hf.get("norm_topk_prob", False)),
        shared_expert_size=(hf.get("n_shared_experts") or 0) * (hf.get("moe_intermediate_size") or 0),
        shared_expert_gate=False, router="sigmoid" if v3 else "softmax", router_groups=groups,
        router_topk_groups=hf.get("topk_group") or 1, router_group_score="top2" if v3 else "max",
        router_bias=v3, routed_scaling=float(hf.get("routed_scaling_factor", 1.0)),
    )


def rope_pairs_to_halves_mla(t, cfg: ModelConfig, *, rows_per_head: int, rope_offset: int, heads: int):
    """Within each head's block of rows, the rope part [rope_offset, rope_offset + rope_dim) goes from
    DeepSeek's adjacent pairs to halves (the q.k products are unchanged, see rope_pairs_to_halves)."""
    import torch

    r = cfg.qk_rope_head_dim
    order = torch.arange(rows_per_head)
    order[rope_offset:rope_offset + r] = rope_offset + torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])
    return t.view(heads, rows_per_head, *t.shape[1:])[:, order].reshape(t.shape)


def _mla_q(t, cfg: ModelConfig):
    return rope_pairs_to_halves_mla(t, cfg, rows_per_head=cfg.head_dim, rope_offset=cfg.qk_nope_head_dim,
                                    heads=cfg.n_head)


def _mla_kv_a(t, cfg: ModelConfig):
    return rope_pairs_to_halves_mla(t, cfg, rows_per_head=t.shape[0], rope_offset=cfg.kv_lora_rank, heads=1)


def deepseek_weights(hf: dict) -> dict[str, tuple[str, ...]]:
    A = L + "self_attn."
    attn = {"attn.kv_a.weight": "kv_a_proj_with_mqa.weight", "attn.kv_a_norm.weight": "kv_a_layernorm.weight",
            "attn.kv_b.weight": "kv_b_proj.weight", "attn.o.weight": "o_proj.weight"}
    if hf.get("q_lora_rank"):
        attn.update({"attn.q_a.weight": "q_a_proj.weight", "attn.q_a_norm.weight": "q_a_layernorm.weight",
                     "attn.q_b.weight": "q_b_proj.weight"})
    else:
        attn["attn.q.weight"] = "q_proj.weight"
    if hf.get("attention_bias"):
        attn.update({"attn.kv_a.bias": "kv_a_proj_with_mqa.bias", "attn.o.bias": "o_proj.bias"})
        if hf.get("q_lora_rank"):
            attn["attn.q_a.bias"] = "q_a_proj.bias"
    return {
        **{k: v for k, v in LLAMA_WEIGHTS.items() if ".attn." not in k},
        **{f"layers.{{i}}.{ours}": (A + theirs,) for ours, theirs in attn.items()},
        "layers.{i}.mlp.router.weight": (L + "mlp.gate.weight",),
        "layers.{i}.mlp.router_bias": (L + "mlp.gate.e_score_correction_bias",),
        "layers.{i}.mlp.experts.{e}.gate_up.weight": (L + "mlp.experts.{e}.gate_proj.weight",
                                                      L + "mlp.experts.{e}.up_proj.weight"),
        "layers.{i}.mlp.experts.{e}.down.weight": (L + "mlp.experts.{e}.down_proj.weight",),
        "layers.{i}.mlp.shared.gate_up.weight": (L + "mlp.shared_experts.gate_proj.weight",
                                                 L + "mlp.shared_experts.up_proj.weight"),
        "layers.{i}.mlp.shared.down.weight": (L + "mlp.shared_experts.down_proj.weight",),
    }


DEEPSEEK_TRANSFORMS = {"layers.{i}.attn.q.weight": _mla_q, "layers.{i}.attn.q_b.weight": _mla_q,
                       "layers.{i}.attn.kv_a.weight": _mla_kv_a, "layers.{i}.attn.kv_a.bias": _mla_kv_a}


def qwen_config(hf: dict) -> ModelConfig:
    """Qwen (first generation, `qwen` remote code): LLaMA-like with fused c_attn (q/k/v bias), an MLP
    whose `intermediate_size` counts both halves, and RoPE on rotary_pct of each head.
    Its inference-time context extension (use_dynamic_ntk with the NTK alpha fixed at prefill, and
    use_logn_attn) only acts past `seq_length` and is not implemented, so the context is capped there:
    longer prompts get a clear error instead of silently different numbers."""
    d = hf["hidden_size"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "qwen",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"] // 2,
        head_dim=hf.get("kv_channels") or d // hf["num_attention_heads"],
        max_seq_len=hf.get("seq_length", 2048), norm="rmsnorm", norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        mlp="swiglu", qkv_bias=True, attn_out_bias=False,
        rope_theta=float(hf.get("rotary_emb_base", 10000)), rotary_percentage=float(hf.get("rotary_pct", 1.0)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **_token_ids(hf),
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


def _rotary_fraction(hf: dict, default: float = 1.0) -> float:
    params = hf.get("rope_parameters") or {}
    return float(params.get("partial_rotary_factor", hf.get("rotary_pct", hf.get("partial_rotary_factor", default))))


_GELU = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh",
         "relu": "relu"}


def _plain_mlp(hf: dict, key: str = "hidden_act") -> str:
    act = hf.get(key, "gelu")
    if act not in _GELU:
        raise UnsupportedModelError(f"{key}={act!r} is not supported; supported: {sorted(_GELU)}")
    return _GELU[act]


def gpt_neox_config(hf: dict) -> ModelConfig:
    """GPT-NeoX / Pythia / Dolly 2.0 / RedPajama-INCITE / StableLM-alpha: LayerNorm, GELU MLP with
    biases, partial rotary, parallel (default) or sequential residual."""
    theta, scaling = _rope_scaling(hf)
    return ModelConfig(
        name=hf.get("_name_or_path") or "gpt_neox",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp=_plain_mlp(hf), mlp_bias=True,
        qkv_bias=bool(hf.get("attention_bias", True)), attn_out_bias=bool(hf.get("attention_bias", True)),
        rope_theta=theta, rope_scaling=scaling, rotary_percentage=_rotary_fraction(hf),
        parallel_residual=bool(hf.get("use_parallel_residual", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_token_ids(hf),
    )


def per_head_qkv(t, cfg: ModelConfig):
    """Fused qkv stored head by head, (n_head, 3, head_dim, ...), -> our (3, n_head, head_dim, ...):
    rows of all q heads, then all k heads, then all v heads."""
    return t.view(cfg.n_head, 3, cfg.head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def rope_pairs_to_halves(t, cfg: ModelConfig):
    """Fused qkv whose q and k rotate adjacent pairs (GPT-J's rotate_every_two) -> our rotate-half
    order. Within each head's first rope_dim rows, pair (2i, 2i+1) becomes (i, i + rope_dim/2); the
    same permutation on q and k leaves every q.k product unchanged, so RoPE on halves then computes
    exactly what the interleaved original did."""
    import torch

    r, hd = cfg.rope_dim, cfg.head_dim
    order = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, hd)])
    q, k, v = t.split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=0)

    def per_head(x, heads):
        return x.view(heads, hd, *x.shape[1:])[:, order].reshape(x.shape)

    return torch.cat([per_head(q, cfg.n_head), per_head(k, cfg.n_kv_head), v], dim=0)


def gptj_config(hf: dict) -> ModelConfig:
    """GPT-J: one LayerNorm feeding parallel attention and MLP, pair-interleaved RoPE on the first
    rotary_dim dims of each head, no attention biases, a biased LM head."""
    d, H = hf["n_embd"], hf["n_head"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "gptj",
        vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_embd=d, n_head=H,
        intermediate_size=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=_plain_mlp(hf, "activation_function"), mlp_bias=True,
        rotary_percentage=(hf.get("rotary_dim") or d // H) / (d // H),
        parallel_residual=True, shared_norm=True, lm_head_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_token_ids(hf),
    )


J = "transformer.h.{i}."
GPTJ_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    "lm_head.bias": ("lm_head.bias",),
    "layers.{i}.attn_norm.weight": (J + "ln_1.weight",),
    "layers.{i}.attn_norm.bias": (J + "ln_1.bias",),
    "layers.{i}.attn.qkv.weight": tuple(J + f"attn.{p}_proj.weight" for p in "qkv"),
    "layers.{i}.attn.o.weight": (J + "attn.out_proj.weight",),
    "layers.{i}.mlp.gate_up.weight": (J + "mlp.fc_in.weight",),
    "layers.{i}.mlp.gate_up.bias": (J + "mlp.fc_in.bias",),
    "layers.{i}.mlp.down.weight": (J + "mlp.fc_out.weight",),
    "layers.{i}.mlp.down.bias": (J + "mlp.fc_out.bias",),
}


def codegen_qkv(t, cfg: ModelConfig):
    """CodeGen's qkv_proj was written for 4-way model parallelism: rows (4, [q, v, k], d/4, ...), each
    quarter holding n_head/4 heads. -> [q; k; v], then GPT-J's pair-interleaved RoPE -> halves."""
    import torch

    x = t.view(4, 3, cfg.n_embd // 4, *t.shape[1:])
    q, v, k = (x[:, j].reshape(cfg.n_embd, *t.shape[1:]) for j in range(3))
    return rope_pairs_to_halves(torch.cat([q, k, v]), cfg)


def codegen_config(hf: dict) -> ModelConfig:
    """CodeGen / MOSS: GPT-J's block (one LayerNorm, parallel attention + MLP, biased head) with the
    model-parallel qkv layout."""
    if hf["n_head"] % 4:
        raise UnsupportedModelError(f"CodeGen needs n_head divisible by 4 (its qkv layout), got {hf['n_head']}")
    hd = hf["n_embd"] // hf["n_head"]
    rot = min(hf.get("rotary_dim") or hd, hf.get("n_ctx", hf.get("n_positions", 2048)) // hf["n_head"])
    return gptj_config({**hf, "rotary_dim": rot})


CODEGEN_WEIGHTS = {
    **{k: v for k, v in GPTJ_WEIGHTS.items() if "attn.qkv" not in k},
    "layers.{i}.attn.qkv.weight": (J + "attn.qkv_proj.weight",),
}


def phi3_config(hf: dict) -> ModelConfig:
    """Phi-3: LLaMA block with fused qkv / gate_up; the 128k models use LongRoPE."""
    return llama_config(hf, rotary_percentage=_rotary_fraction(hf))


PHI3_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if "qkv" not in k and "gate_up" not in k},
    "layers.{i}.attn.qkv.weight": (L + "self_attn.qkv_proj.weight",),
    "layers.{i}.mlp.gate_up.weight": (L + "mlp.gate_up_proj.weight",),
}


def transpose(t, cfg: ModelConfig):
    """GPT-2's Conv1D stores weights as (in, out); nn.Linear wants (out, in)."""
    return t.t().contiguous()


def gpt2_config(hf: dict) -> ModelConfig:
    """GPT-2 / Cerebras-GPT: learned absolute positions, pre-LN, GELU (tanh) MLP, biases, tied head."""
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise UnsupportedModelError("GPT-2 attention variants scale_attn_by_inverse_layer_idx / "
                                    "reorder_and_upcast_attn are not supported")
    d = hf["n_embd"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "gpt2",
        vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_embd=d, n_head=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=_plain_mlp(hf, "activation_function"), mlp_bias=True, qkv_bias=True, attn_out_bias=True,
        position="learned", tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **_token_ids(hf),
    )


G = "transformer.h.{i}."
GPT2_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "pos_embed.weight": ("transformer.wpe.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (G + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2"), ("attn.qkv", "attn.c_attn"),
                            ("attn.o", "attn.c_proj"), ("mlp.gate_up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj"))
       for wb in ("weight", "bias")},
}
GPT2_TRANSFORMS = {f"layers.{{i}}.{m}.weight": transpose for m in ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")}


def opt_config(hf: dict) -> ModelConfig:
    """OPT: learned positions offset by 2, ReLU MLP; pre-LN, except OPT-350m: post-LN with a narrower
    word embedding projected in and out."""
    d = hf["hidden_size"]
    pre = bool(hf.get("do_layer_norm_before", True))
    return ModelConfig(
        norm_placement="pre" if pre else "post",
        final_norm=pre and not hf.get("_remove_final_layer_norm", False),
        embed_dim=hf.get("word_embed_proj_dim") or d,
        name=hf.get("_name_or_path") or "opt",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=hf["num_attention_heads"], intermediate_size=hf["ffn_dim"],
        max_seq_len=hf.get("max_position_embeddings", 2048), position="learned", position_offset=2,
        norm="layernorm", norm_eps=1e-5, mlp=_plain_mlp(hf, "activation_function"),
        mlp_bias=bool(hf.get("enable_bias", True)), qkv_bias=bool(hf.get("enable_bias", True)),
        attn_out_bias=bool(hf.get("enable_bias", True)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **_token_ids(hf),
    )


O = "model.decoder.layers.{i}."
OPT_WEIGHTS = {
    "embed.weight": ("model.decoder.embed_tokens.weight",),
    "project_in.weight": ("model.decoder.project_in.weight",),
    "project_out.weight": ("model.decoder.project_out.weight",),
    "pos_embed.weight": ("model.decoder.embed_positions.weight",),
    "norm.weight": ("model.decoder.final_layer_norm.weight",),
    "norm.bias": ("model.decoder.final_layer_norm.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": tuple(O + f"{t}.{wb}" for t in theirs)
       for ours, theirs in (("attn_norm", ("self_attn_layer_norm",)), ("mlp_norm", ("final_layer_norm",)),
                            ("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                            ("attn.o", ("self_attn.out_proj",)), ("mlp.gate_up", ("fc1",)), ("mlp.down", ("fc2",)))
       for wb in ("weight", "bias")},
}


def glm_config(hf: dict) -> ModelConfig:
    """GLM-4 / ChatGLM in transformers' `glm` layout: LLaMA block with q/k/v biases, fused gate_up,
    pair-interleaved RoPE on the first half of each head (re-ordered at load, see rope_pairs_to_halves)."""
    bias = bool(hf.get("attention_bias", True))
    return llama_config(hf, qkv_bias=bias, attn_out_bias=False, rotary_percentage=_rotary_fraction(hf, 0.5))


GLM_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if "gate_up" not in k},
    "layers.{i}.mlp.gate_up.weight": (L + "mlp.gate_up_proj.weight",),
}
GLM_TRANSFORMS = {"layers.{i}.attn.qkv.weight": rope_pairs_to_halves,
                  "layers.{i}.attn.qkv.bias": rope_pairs_to_halves}


def chatglm_config(hf: dict) -> ModelConfig:
    """ChatGLM2-6B / ChatGLM3-6B / GLM-4-9B in THUDM's original (remote-code) layout: the same network
    as `glm` — multi-query groups, q/k/v bias, RoPE on half of each head in adjacent pairs, RMSNorm."""
    if not hf.get("rmsnorm", True) or hf.get("apply_residual_connection_post_layernorm") or \
            not hf.get("post_layer_norm", True):
        raise UnsupportedModelError("this chatglm variant (LayerNorm / post-LN residual) is not supported; "
                                    "ChatGLM2/3 and GLM-4 are")
    H = hf["num_attention_heads"]
    kv = hf["multi_query_group_num"] if hf.get("multi_query_attention") else H
    bias = bool(hf.get("add_qkv_bias", True))
    return ModelConfig(
        name=hf.get("_name_or_path") or "chatglm",
        vocab_size=hf.get("padded_vocab_size") or hf["vocab_size"], n_layer=hf["num_layers"],
        n_embd=hf["hidden_size"], n_head=H, n_kv_head=kv, head_dim=hf.get("kv_channels"),
        intermediate_size=hf["ffn_hidden_size"], max_seq_len=hf.get("seq_length", 2048),
        norm="rmsnorm", norm_eps=hf.get("layernorm_epsilon", 1e-5), mlp="swiglu",
        mlp_bias=bool(hf.get("add_bias_linear", False)), qkv_bias=bias,
        attn_out_bias=bool(hf.get("add_bias_linear", False)),
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
    parallel = bool(hf.get("use_parallel_residual", False))
    return llama_config(hf, norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
                        qk_norm=bool(hf.get("qk_layernorm", False)), qk_norm_kind="layernorm_per_head",
                        qkv_bias=bool(hf.get("use_qkv_bias", False)), attn_out_bias=False,
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


def grouped_qkv(t, cfg: ModelConfig):
    """Falcon's fused qkv, grouped per key/value head: (n_kv_head, g + 2, head_dim, ...) with the g
    query heads of the group, then its k and v. Covers Falcon-40B/180B (g = n_head / n_kv_head),
    Falcon-7B multi-query (one group) and MHA checkpoints (g = 1, i.e. per-head q, k, v)."""
    import torch

    g, hd = cfg.n_head // cfg.n_kv_head, cfg.head_dim
    x = t.view(cfg.n_kv_head, g + 2, hd, *t.shape[1:])
    q = x[:, :g].reshape(cfg.q_size, *t.shape[1:])
    return torch.cat([q, x[:, g].reshape(cfg.kv_size, *t.shape[1:]), x[:, g + 1].reshape(cfg.kv_size, *t.shape[1:])])


def refined_web(hf: dict) -> dict:
    """The pre-transformers Falcon configs (remote code `RW`): model_type RefinedWebModel (Falcon-7B,
    Falcon-RW-1B/7B) and RefinedWeb (Falcon-40B, the new decoder architecture, with n_head_kv).
    Same tensor names as transformers' `falcon`; only config keys differ."""
    hf = {**hf, "num_attention_heads": hf.get("num_attention_heads") or hf["n_head"],
          "num_hidden_layers": hf.get("num_hidden_layers") or hf["n_layer"]}
    if hf.get("model_type") == "RefinedWeb":
        hf |= {"new_decoder_architecture": True, "num_kv_heads": hf.get("n_head_kv") or hf.get("num_kv_heads")}
    return hf


def _falcon_layout(hf: dict) -> tuple[bool, int]:
    new = bool(hf.get("new_decoder_architecture", False))
    n_ln = hf.get("num_ln_in_parallel_attn") or (2 if new else 1)
    return new, n_ln


def falcon_config(hf: dict) -> ModelConfig:
    """Falcon: RoPE, LayerNorm, GELU MLP; 7B = multi-query + parallel attention/MLP on one norm;
    40B/180B = the new decoder architecture (grouped kv heads, ln_attn + ln_mlp, parallel);
    Falcon-RW-1B/7B = ALiBi (added before the softmax scale, in bfloat16), sequential MHA with biases."""
    hf = refined_web(hf)
    new, n_ln = _falcon_layout(hf)
    parallel = new or bool(hf.get("parallel_attn", True))
    if new and not hf.get("parallel_attn", True):
        raise UnsupportedModelError("Falcon new_decoder_architecture without parallel_attn is not supported")
    H = hf["num_attention_heads"]
    kv = (hf.get("num_kv_heads") or H) if (new or not hf.get("multi_query", True)) else 1
    d = hf["hidden_size"]
    theta, scaling = _rope_scaling(hf)
    bias = bool(hf.get("bias", False))
    return ModelConfig(
        name=hf.get("_name_or_path") or "falcon",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=H, n_kv_head=kv, intermediate_size=hf.get("ffn_hidden_size") or 4 * d,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=_plain_mlp(hf, "activation"),
        mlp_bias=bias, qkv_bias=bias, attn_out_bias=bias, rope_theta=theta, rope_scaling=scaling,
        position="alibi" if hf.get("alibi") else "rope", alibi_scaled=True, alibi_dtype="bfloat16",
        parallel_residual=parallel, shared_norm=parallel and n_ln == 1,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), **_token_ids(hf),
    )


def falcon_weights(hf: dict) -> dict[str, tuple[str, ...]]:
    F = "transformer.h.{i}."
    new, n_ln = _falcon_layout(refined_web(hf))
    parallel = new or bool(hf.get("parallel_attn", True))
    if parallel and n_ln == 2:
        norms = {"attn_norm": "ln_attn", "mlp_norm": "ln_mlp"}
    elif parallel:
        norms = {"attn_norm": "input_layernorm"}
    else:
        norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    linears = {"attn.qkv": "self_attention.query_key_value", "attn.o": "self_attention.dense",
               "mlp.gate_up": "mlp.dense_h_to_4h", "mlp.down": "mlp.dense_4h_to_h"}
    return {
        "embed.weight": ("transformer.word_embeddings.weight",),
        "norm.weight": ("transformer.ln_f.weight",),
        "norm.bias": ("transformer.ln_f.bias",),
        "lm_head.weight": ("lm_head.weight",),
        **{f"layers.{{i}}.{ours}.{wb}": (F + f"{theirs}.{wb}",)
           for ours, theirs in {**norms, **linears}.items() for wb in ("weight", "bias")},
    }


def llama4_config(hf: dict) -> ModelConfig:
    """Llama 4 (text): MoE on some layers (top-k sigmoid router scaling each expert's *input*, plus an
    ungated shared expert), NoPE layers with query temperature, chunked attention on RoPE layers,
    weightless q/k norm on RoPE layers, pair-interleaved RoPE (re-ordered at load)."""
    n = hf["num_hidden_layers"]
    rope_on = hf.get("no_rope_layers") or [1] * n
    rope_layers = tuple(i for i in range(n) if rope_on[i])
    types = hf.get("layer_types") or []
    chunked = tuple(i for i, t in enumerate(types) if t == "chunked_attention")
    E = hf.get("num_local_experts") or 0
    temp = bool(hf.get("attn_temperature_tuning", False))
    return llama_config(
        hf, intermediate_size=hf.get("intermediate_size_mlp") or hf["intermediate_size"],
        nope_layers=tuple(i for i in range(n) if not rope_on[i]) or None,
        attention_chunk=hf.get("attention_chunk_size") if chunked else None, chunked_layers=chunked or None,
        qk_norm=bool(hf.get("use_qk_norm", False)), qk_norm_kind="l2", qk_norm_layers=rope_layers,
        attn_temperature_floor=int(hf.get("floor_scale", 8192)) if temp else 0,
        attn_temperature_scale=float(hf.get("attn_scale", 0.1)) if temp else 0.0,
        n_experts=E, n_experts_per_tok=hf.get("num_experts_per_tok") or 0,
        moe_intermediate_size=hf["intermediate_size"], moe_layers=tuple(hf.get("moe_layers") or ()) if E else None,
        moe_renormalize=False, router="sigmoid", moe_scale_input=True,
        shared_expert_size=hf["intermediate_size"] if E else 0, shared_expert_gate=False,
    )


FF = L + "feed_forward."
LLAMA4_WEIGHTS = {
    **{k: v for k, v in LLAMA_WEIGHTS.items() if ".mlp." not in k},
    "layers.{i}.mlp.gate_up.weight": (FF + "gate_proj.weight", FF + "up_proj.weight"),
    "layers.{i}.mlp.down.weight": (FF + "down_proj.weight",),
    "layers.{i}.mlp.router.weight": (FF + "router.weight",),
    # experts are stored stacked, (E, d, 2I) and (E, I, d): one slice per expert, transposed
    "layers.{i}.mlp.experts.{e}.gate_up.weight": (FF + "experts.gate_up_proj[{e}]",),
    "layers.{i}.mlp.experts.{e}.down.weight": (FF + "experts.down_proj[{e}]",),
    "layers.{i}.mlp.shared.gate_up.weight": (FF + "shared_expert.gate_proj.weight",
                                             FF + "shared_expert.up_proj.weight"),
    "layers.{i}.mlp.shared.down.weight": (FF + "shared_expert.down_proj.weight",),
}
LLAMA4_TRANSFORMS = {"layers.{i}.attn.qkv.weight": rope_pairs_to_halves,
                     "layers.{i}.mlp.experts.{e}.gate_up.weight": transpose,
                     "layers.{i}.mlp.experts.{e}.down.weight": transpose}


N = "gpt_neox.layers.{i}."
GPT_NEOX_WEIGHTS = {
    "embed.weight": ("gpt_neox.embed_in.weight",),
    "norm.weight": ("gpt_neox.final_layer_norm.weight",),
    "norm.bias": ("gpt_neox.final_layer_norm.bias",),
    "lm_head.weight": ("embed_out.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (N + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
                            ("attn.qkv", "attention.query_key_value"), ("attn.o", "attention.dense"),
                            ("mlp.gate_up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h"))
       for wb in ("weight", "bias")},
}


def bloom_config(hf: dict) -> ModelConfig:
    """BLOOM / BLOOMZ: LayerNorm after the embedding, pre-LN blocks, GELU (tanh), ALiBi, biases."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedModelError("BLOOM with apply_residual_connection_post_layernorm=True is not supported")
    d = hf.get("hidden_size") or hf["n_embed"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "bloom",
        vocab_size=hf["vocab_size"], n_layer=hf.get("n_layer") or hf["num_hidden_layers"], n_embd=d,
        n_head=hf.get("n_head") or hf["num_attention_heads"], intermediate_size=4 * d,
        max_seq_len=hf.get("seq_length", 2048),  # trained length; ALiBi itself has no limit
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), embed_norm=True,
        mlp="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True, position="alibi",
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
        **_token_ids(hf),
    )


BL = "transformer.h.{i}."
BLOOM_WEIGHTS = {
    "embed.weight": ("transformer.word_embeddings.weight",),
    "embed_norm.weight": ("transformer.word_embeddings_layernorm.weight",),
    "embed_norm.bias": ("transformer.word_embeddings_layernorm.bias",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (BL + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
                            ("attn.qkv", "self_attention.query_key_value"), ("attn.o", "self_attention.dense"),
                            ("mlp.gate_up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h"))
       for wb in ("weight", "bias")},
}


@dataclass(frozen=True)
class Adapter:
    config: Callable[[dict], ModelConfig]
    # canonical -> checkpoint names; or a function of config.json when the names depend on a layout flag
    weights: dict[str, tuple[str, ...]] | Callable[[dict], dict[str, tuple[str, ...]]]
    # checkpoint tensors that carry no weights we need (recomputed buffers)
    ignore: tuple[str, ...] = field(default=("rotary_emb.inv_freq",))
    # canonical template -> fn(tensor, cfg): layout changes applied after assembling; or a function
    # of config.json returning that dict
    transforms: dict[str, Callable] | Callable[[dict], dict[str, Callable]] = field(default_factory=dict)


FALCON = Adapter(falcon_config, falcon_weights,
                 transforms={"layers.{i}.attn.qkv.weight": grouped_qkv, "layers.{i}.attn.qkv.bias": grouped_qkv})

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(llama_config, LLAMA_WEIGHTS),
    "mistral": Adapter(llama_config, LLAMA_WEIGHTS),
    "qwen2": Adapter(qwen2_config, LLAMA_WEIGHTS),
    "qwen3": Adapter(qwen3_config, LLAMA_WEIGHTS),
    "baichuan": Adapter(baichuan_config, BAICHUAN_WEIGHTS, transforms=baichuan_transforms),
    "qwen": Adapter(qwen_config, QWEN_WEIGHTS),
    "mixtral": Adapter(mixtral_config, MIXTRAL_WEIGHTS),
    "qwen2_moe": Adapter(qwen2_moe_config, QWEN_MOE_WEIGHTS),
    "qwen3_moe": Adapter(qwen3_moe_config, QWEN_MOE_WEIGHTS),
    "deepseek_v2": Adapter(deepseek_config, deepseek_weights, transforms=DEEPSEEK_TRANSFORMS),
    "llama4_text": Adapter(llama4_config, LLAMA4_WEIGHTS, transforms=LLAMA4_TRANSFORMS),
    "deepseek_v3": Adapter(deepseek_config, deepseek_weights, transforms=DEEPSEEK_TRANSFORMS),
    "bloom": Adapter(
        bloom_config, BLOOM_WEIGHTS,
        transforms={"layers.{i}.attn.qkv.weight": per_head_qkv, "layers.{i}.attn.qkv.bias": per_head_qkv},
    ),
    "gptj": Adapter(
        gptj_config, GPTJ_WEIGHTS, ignore=("attn.bias", "attn.masked_bias", "embed_positions"),
        transforms={"layers.{i}.attn.qkv.weight": rope_pairs_to_halves},
    ),
    "codegen": Adapter(codegen_config, CODEGEN_WEIGHTS, ignore=("attn.causal_mask", "attn.bias", "attn.masked_bias"),
                       transforms={"layers.{i}.attn.qkv.weight": codegen_qkv}),
    "phi3": Adapter(phi3_config, PHI3_WEIGHTS),
    "gpt2": Adapter(gpt2_config, GPT2_WEIGHTS, ignore=("attn.bias", "attn.masked_bias"),
                    transforms=GPT2_TRANSFORMS),
    "opt": Adapter(opt_config, OPT_WEIGHTS),
    "glm": Adapter(glm_config, GLM_WEIGHTS, transforms=GLM_TRANSFORMS),
    "chatglm": Adapter(chatglm_config, CHATGLM_WEIGHTS, transforms=GLM_TRANSFORMS),
    "stablelm": Adapter(stablelm_config, stablelm_weights),
    "falcon": FALCON,
    # Falcon's remote-code (`RW`) configs: the same network and tensor names, older config keys
    "RefinedWebModel": FALCON,
    "RefinedWeb": FALCON,
    "gpt_neox": Adapter(
        gpt_neox_config, GPT_NEOX_WEIGHTS,
        ignore=("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias"),
        transforms={"layers.{i}.attn.qkv.weight": per_head_qkv, "layers.{i}.attn.qkv.bias": per_head_qkv},
    ),
}


def get_adapter(model_type: str | None) -> Adapter:
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]
