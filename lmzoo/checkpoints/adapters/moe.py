"""Mixture-of-experts families: Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3 (MLA + DeepSeekMoE), Llama 4."""

from __future__ import annotations

from typing import Any

from lmzoo.checkpoints.adapters.common import (
    LLAMA_WEIGHTS,
    L,
    _rope_scaling,
    _token_ids,
    flag,
    llama_config,
    rope_pairs_to_halves,
    transpose,
)
from lmzoo.config import ModelConfig


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
                        moe_renormalize=flag(hf, "norm_topk_prob", False),
                        moe_layers=None if len(moe) == n else moe, **overrides)


def qwen2_moe_config(hf: dict) -> ModelConfig:
    """Qwen1.5-MoE / Qwen2-MoE: Qwen2 attention; routed experts plus a shared expert behind a sigmoid gate."""
    return _qwen_moe(hf, qkv_bias=True, attn_out_bias=False,
                     shared_expert_size=hf.get("shared_expert_intermediate_size") or 0)


def qwen3_moe_config(hf: dict) -> ModelConfig:
    bias = flag(hf, "attention_bias", False)
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

def deepseek_v2_config(hf: dict) -> ModelConfig:
    return _deepseek_config(hf, sigmoid_router=hf.get("scoring_func", "softmax") == "sigmoid")


def deepseek_v3_config(hf: dict) -> ModelConfig:
    return _deepseek_config(hf, sigmoid_router=hf.get("scoring_func", "sigmoid") == "sigmoid")


def _deepseek_config(hf: dict, *, sigmoid_router: bool) -> ModelConfig:
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
    v3 = sigmoid_router or hf.get("topk_method") == "noaux_tc"
    groups = hf.get("n_group") or 1
    if not v3 and hf.get("topk_method", "greedy") == "greedy":
        groups = 1
    E = hf.get("n_routed_experts") or hf.get("num_local_experts") or hf.get("num_experts") or 0
    return llama_config(
        hf, attention="mla", q_lora_rank=hf.get("q_lora_rank") or None, kv_lora_rank=hf["kv_lora_rank"],
        qk_nope_head_dim=hf["qk_nope_head_dim"], qk_rope_head_dim=hf["qk_rope_head_dim"],
        v_head_dim=hf["v_head_dim"], head_dim=qk_dim, n_kv_head=hf["num_attention_heads"],
        qkv_bias=flag(hf, "attention_bias", False), attn_out_bias=flag(hf, "attention_bias", False),
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
    from lmzoo.checkpoints.permute import pairs_to_halves

    assert t.shape[0] == heads * rows_per_head, (t.shape, heads, rows_per_head)
    return pairs_to_halves(t, heads=heads, rope_dim=cfg.qk_rope_head_dim, offset=rope_offset)


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


def deepseek_transforms(hf: dict) -> dict:
    """DeepSeek's released weights rotate adjacent pairs (re-ordered at load); transformers' V3 config
    says so with rope_interleave=true (its default). Checkpoints saved with rope_interleave=false
    already use rotate-half order and load as they are."""
    return DEEPSEEK_TRANSFORMS if hf.get("rope_interleave", True) else {}

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
    temp = bool(hf.get("attn_temperature_tuning", False))  # Llama-4 configs write a number (4) here
    return llama_config(
        hf, intermediate_size=hf.get("intermediate_size_mlp") or hf["intermediate_size"],
        nope_layers=tuple(i for i in range(n) if not rope_on[i]) or None,
        attention_chunk=hf.get("attention_chunk_size") if chunked else None, chunked_layers=chunked or None,
        qk_norm=flag(hf, "use_qk_norm", False), qk_norm_kind="l2", qk_norm_layers=rope_layers,
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
# Llama 4 as released (`llama4`, Llama4ForConditionalGeneration: Scout, Maverick): the same text model
# under `language_model.`, its hyperparameters under `text_config`, next to a vision tower and projector
# that text generation never runs (ignored at load; images are not supported)
def llama4_multimodal_config(hf: dict) -> ModelConfig:
    text = dict(hf["text_config"])
    text.setdefault("_name_or_path", hf.get("_name_or_path"))
    return llama4_config(text)


LLAMA4_MULTIMODAL_WEIGHTS = {k: tuple("language_model." + p for p in v) for k, v in LLAMA4_WEIGHTS.items()}
LLAMA4_VISION = ("vision_model.", "multi_modal_projector.")

LLAMA4_TRANSFORMS = {"layers.{i}.attn.qkv.weight": rope_pairs_to_halves,
                     "layers.{i}.mlp.experts.{e}.gate_up.weight": transpose,
                     "layers.{i}.mlp.experts.{e}.down.weight": transpose}


def grok1_config(hf: dict) -> ModelConfig:
    """Grok-1 (xai-org/grok-1; checkpoints in the layout of that repository's pytorch/ port,
    model_type "grok-1"). The network follows the JAX model.py the weights were released with:
    sandwich RMSNorms, attention logits scaled by attn_output_multiplier and soft-capped at 30,
    embeddings x embedding_multiplier_scale, a tied head x output_multiplier_scale, and 8 GeGLU
    experts picked top-2 from a softmax over all 8 *without* renormalising the two gates. (The
    pytorch/ port renormalises them -- harmless, since the post-MoE RMSNorm removes any per-token
    scale -- and uses erf GELU, which does change the numbers; the JAX code uses tanh GELU.)"""
    out_scale = hf.get("output_multiplier_scale", 0.5773502691896257)
    if isinstance(out_scale, list):  # the port's config stores it as a 1-tuple
        out_scale = out_scale[0]
    E = hf.get("num_local_experts", 8)
    d, H = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "grok-1",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d, n_head=H,
        n_kv_head=hf.get("num_key_value_heads") or H, head_dim=d // H, intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 8192), norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-5),
        sandwich_norm=True, mlp="geglu", rope_theta=float(hf.get("rope_theta", 10000)),
        attn_scale=float(hf.get("attn_output_multiplier", (d // H) ** -0.5)),
        attn_logit_softcap=float(hf.get("max_attn_value", 30.0)),
        embed_scale=float(hf.get("embedding_multiplier_scale", 1.0)), logit_scale=float(out_scale),
        n_experts=E if E > 1 else 0, n_experts_per_tok=hf.get("num_experts_per_tok", 2) if E > 1 else 0,
        moe_renormalize=False, router="softmax", tie_embeddings=True, **_token_ids(hf),
    )


def grok1_weights(hf: dict) -> dict[str, tuple[str, ...]]:
    G = "layers.{i}."
    mlp = G + ("mlp.experts.{e}." if hf.get("num_local_experts", 8) > 1 else "mlp.")
    ours = "layers.{i}.mlp.experts.{e}." if hf.get("num_local_experts", 8) > 1 else "layers.{i}.mlp."
    return {
        "embed.weight": ("embedding.weight",),
        "norm.weight": ("norm.weight",),
        "layers.{i}.attn_norm.weight": (G + "norm1.weight",),
        "layers.{i}.post_attn_norm.weight": (G + "norm2.weight",),
        "layers.{i}.mlp_norm.weight": (G + "norm3.weight",),
        "layers.{i}.post_mlp_norm.weight": (G + "norm4.weight",),
        "layers.{i}.attn.qkv.weight": tuple(G + f"attention.{p}_proj.weight" for p in "qkv"),
        "layers.{i}.attn.o.weight": (G + "attention.out_proj.weight",),
        "layers.{i}.mlp.router.weight": (G + "mlp.gating.router_weights.weight",),
        # GeGLU: gelu(x w1) * (x v) -> dense
        ours + "gate_up.weight": (mlp + "w1.weight", mlp + "v.weight"),
        ours + "down.weight": (mlp + "dense.weight",),
    }
