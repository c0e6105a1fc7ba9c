"""What every family adapter shares: the LLaMA names and config translator, RoPE/token-id readers,
layout transforms used by several families, and the Adapter record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import ConfigError, UnsupportedModelError

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

def flag(hf: dict, key: str, default: bool = False) -> bool:
    """A boolean config.json field. JSON has true/false; a string such as "false" would read as True
    under bool(), so anything but a boolean (or 0/1, as some old configs write) is refused."""
    v = hf.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or v in (0, 1):
        return bool(v)
    raise ConfigError(f"config.json {key} = {v!r}; expected true or false")


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
    if kind in ("linear", "dynamic", "llama3", "yarn") and not isinstance(factor, (int, float)):
        raise ConfigError(f"rope scaling {kind!r} needs a numeric 'factor' in config.json, got {factor!r}")
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
        # LLaMA-1 conversions write pad_token_id -1 for "no padding token"; transformers reads it as unset
        "pad_token_id": None if isinstance(hf.get("pad_token_id"), int) and hf["pad_token_id"] < 0 else hf.get("pad_token_id"),
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
        mlp_bias=flag(hf, "mlp_bias", False),
        qkv_bias=flag(hf, "attention_bias", False),
        attn_out_bias=flag(hf, "attention_bias", False),
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        sliding_window_layers=window_layers,
        tie_embeddings=flag(hf, "tie_word_embeddings", False),
        **_token_ids(hf),
    )
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act={act!r} is not supported for this family; expected 'silu'")
    if scaling.kind == "dynamic":
        # the trained context stretched by `factor` is what dynamic NTK is meant to reach
        kw["max_seq_len"] = int(kw["max_seq_len"] * scaling.factor)
    elif scaling.kind in ("yarn", "llama3"):
        # the extended context is factor x the pretraining context; some configs (Qwen2.5's YaRN
        # recipe) leave max_position_embeddings at the pretraining value, others already raised it
        kw["max_seq_len"] = max(kw["max_seq_len"], int(scaling.factor * scaling.original_max_position))
    kw.update(overrides)
    return ModelConfig(**kw)


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

    from lmzoo.checkpoints.permute import pairs_to_halves

    q, k, v = t.split((cfg.q_size, cfg.kv_size, cfg.kv_size), dim=0)
    r = cfg.rope_dim
    return torch.cat([pairs_to_halves(q, heads=cfg.n_head, rope_dim=r),
                      pairs_to_halves(k, heads=cfg.n_kv_head, rope_dim=r), v], dim=0)

def transpose(t, cfg: ModelConfig):
    """GPT-2's Conv1D stores weights as (in, out); nn.Linear wants (out, in)."""
    return t.t().contiguous()

@dataclass(frozen=True)
class Adapter:
    config: Callable[[dict], ModelConfig]
    # canonical -> checkpoint names; or a function of config.json when the names depend on a layout flag
    weights: dict[str, tuple[str, ...]] | Callable[[dict], dict[str, tuple[str, ...]]]
    # checkpoint tensors that carry no weights we need: names ending with (recomputed buffers) or
    # starting with (a multimodal checkpoint's vision tower) one of these
    ignore: tuple[str, ...] = field(default=("rotary_emb.inv_freq",))
    # canonical template -> fn(tensor, cfg): layout changes applied after assembling; or a function
    # of config.json returning that dict
    transforms: dict[str, Callable] | Callable[[dict], dict[str, Callable]] = field(default_factory=dict)
    # transformers' module that holds the routed experts stacked ("model.layers.{i}.mlp.experts", with
    # parameters gate_up_proj (E, 2I, d) and down_proj (E, d, I)): where PEFT puts their LoRA
    # (`target_parameters`); None: the family's routed experts take no LoRA
    experts: str | None = None
