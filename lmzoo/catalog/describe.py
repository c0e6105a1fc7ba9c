"""Words for an architecture dict: the seeds' comparison vocabulary (norm, activation, position
encoding, attention sharing, residual layout, MoE), and human-readable sizes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lmzoo.sizing.estimate import resolve_arch

ACTIVATIONS = {"swiglu": "SwiGLU", "geglu": "GeGLU", "gelu": "GeLU", "gelu_tanh": "GeLU (tanh approx.)",
               "relu": "ReLU"}


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            v = n / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(b: float) -> str:
    gib = b / 1024**3
    if gib >= 1024:
        return f"{gib / 1024:.2f} TiB"
    if gib >= 1:
        return f"{gib:.1f} GiB"
    return f"{b / 1024**2:.0f} MiB"


def norm(a: Mapping[str, Any]) -> str:
    kind = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm"}.get(a["norm"], a["norm"])
    place = a.get("norm_placement", "pre")
    where = {"pre": "pre-norm", "post": "post-norm", "deepnorm": "DeepNorm (scaled residual)"}.get(place, place)
    if a.get("sandwich_norm"):
        where = "sandwich (before + after each sublayer)"
    extra = ", + embedding norm" if a.get("embed_norm") else ""
    return f"{kind}, {where}{extra}"


def activation(a: Mapping[str, Any]) -> str:
    return ACTIVATIONS.get(a["mlp"], a["mlp"])


def position(a: Mapping[str, Any]) -> str:
    p = a["position"]
    if p == "learned":
        return "learned absolute"
    if p == "alibi":
        return "ALiBi"
    if p == "none":
        return "none (NoPE)"
    if p == "rope_2d":
        return "2-D RoPE (GLM: position + block position)"
    if a.get("attention") == "mla":
        rot = f"decoupled, {a['qk_rope_head_dim']} dims"
    else:
        pct = a.get("rotary_percentage", 1.0)
        rot = "full head" if pct >= 1 else f"{pct:.0%} of each head"
    s = a.get("rope_scaling") or {}
    kind = s.get("kind", "none") if isinstance(s, Mapping) else getattr(s, "kind", "none")
    scaling = f", {kind} scaling" if kind and kind != "none" else ""
    nope = ", NoPE every 4th layer" if a.get("nope_layers") else ""
    return f"RoPE ({rot}, θ={a.get('rope_theta', 10000):g}{scaling}{nope})"


def attention(a: Mapping[str, Any]) -> str:
    if a.get("attention") == "mla":
        s = f"MLA (latent {a['kv_lora_rank']} + rope {a['qk_rope_head_dim']}, {a['n_head']} heads)"
    else:
        h, kv = a["n_head"], a.get("n_kv_head") or a["n_head"]
        s = "MHA" if kv == h else "MQA" if kv == 1 else f"GQA ({h} q / {kv} kv heads)"
        if kv == h:
            s += f" ({h} heads)"
    if a.get("sliding_window"):
        s += f", sliding window {a['sliding_window']}"
    if a.get("attention_chunk"):
        s += f", chunked {a['attention_chunk']}"
    return s


def residual(a: Mapping[str, Any]) -> str:
    if a.get("parallel_residual"):
        return "parallel (attn + MLP read the same input" + (", one norm)" if a.get("shared_norm") else ")")
    return "sequential"


def moe(a: Mapping[str, Any]) -> str:
    if not a.get("n_experts"):
        return "dense"
    s = f"{a['n_experts']} experts, top-{a['n_experts_per_tok']}"
    if a.get("shared_expert_size"):
        s += " + shared expert"
    if a.get("moe_layers") is not None and len(a["moe_layers"]) != a["n_layer"]:
        s += f" on {len(a['moe_layers'])}/{a['n_layer']} layers"
    return s


def biases(a: Mapping[str, Any]) -> str:
    parts = [n for n, k in (("qkv", "qkv_bias"), ("attn-out", "attn_out_bias"), ("mlp", "mlp_bias"),
                            ("head", "lm_head_bias")) if a.get(k)]
    return ", ".join(parts) if parts else "none"


def summary(arch: Mapping[str, Any]) -> dict[str, str]:
    a = resolve_arch(arch).to_dict()  # derived sizes (head_dim, kv heads, expert width) resolved
    return {
        "layers": str(a["n_layer"]), "d_model": str(a["n_embd"]),
        "heads": f"{a['n_head']} (head_dim {a['head_dim']})", "attention": attention(a),
        "ffn": (f"{a['intermediate_size']}" + (f" (experts {a['moe_intermediate_size']})" if a.get("n_experts") else "")),
        "norm": norm(a), "activation": activation(a), "position": position(a), "residual": residual(a),
        "moe": moe(a), "tied embeddings": "yes" if a.get("tie_embeddings") else "no", "biases": biases(a),
        "vocab": f"{a['vocab_size']:,}", "context": f"{a['max_seq_len']:,}",
    }
