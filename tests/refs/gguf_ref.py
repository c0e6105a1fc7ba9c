"""An independent reference for GGUF models, written from the published ggml block formats
(ggml-quants.c) and the LLaMA equations — numpy only, sharing no code with lmzoo or the gguf package's
dequantisers. Used by the GGUF tests to check lmzoo's loader end to end."""

from __future__ import annotations

import math

import numpy as np

QK = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def _f16(b: np.ndarray) -> np.ndarray:
    return b.copy().view(np.float16).astype(np.float32)


def dequantize(raw: np.ndarray, kind: str, n_elements: int) -> np.ndarray:
    """Raw block bytes (any shape, uint8) -> float32 flat array of n_elements."""
    if kind == "F32":
        return raw.view(np.float32).reshape(-1)[:n_elements].astype(np.float32)
    if kind == "F16":
        return raw.view(np.float16).reshape(-1).astype(np.float32)
    if kind == "BF16":
        u16 = raw.view(np.uint16).reshape(-1).astype(np.uint32)
        return (u16 << 16).view(np.float32)
    qk, size = QK[kind]
    b = raw.reshape(-1).view(np.uint8).reshape(-1, size)
    n = b.shape[0]
    if kind == "Q8_0":  # d (f16) | 32 x int8
        d = _f16(b[:, 0:2])
        return (d * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
    if kind in ("Q4_0", "Q4_1"):  # d | [m] | 16 bytes: low nibbles = x[0:16], high = x[16:32]
        d = _f16(b[:, 0:2])
        off = 2 if kind == "Q4_0" else 4
        qs = b[:, off:off + 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        if kind == "Q4_0":
            return (d * (q - 8)).reshape(-1)
        return (d * q + _f16(b[:, 2:4])).reshape(-1)
    if kind == "Q4_K":  # d | dmin | 12 bytes of 6-bit (scale, min) x 8 | 128 bytes of nibbles
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
        sc = b[:, 4:16].astype(np.int32)
        qs = b[:, 16:144]
        out = np.empty((n, 256), np.float32)
        for j in range(8):
            if j < 4:
                s, m = sc[:, j] & 63, sc[:, j + 4] & 63
            else:
                s = (sc[:, j + 4] & 0x0F) | ((sc[:, j - 4] >> 6) << 4)
                m = (sc[:, j + 4] >> 4) | ((sc[:, j] >> 6) << 4)
            chunk = qs[:, (j // 2) * 32:(j // 2) * 32 + 32]
            q = (chunk & 0x0F) if j % 2 == 0 else (chunk >> 4)
            out[:, j * 32:(j + 1) * 32] = d * s[:, None] * q - dmin * m[:, None]
        return out.reshape(-1)
    if kind == "Q6_K":  # ql[128] | qh[64] | scales int8[16] | d
        ql, qh = b[:, 0:128].astype(np.int32), b[:, 128:192].astype(np.int32)
        scales = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b[:, 208:210])
        out = np.empty((n, 256), np.float32)
        for half in range(2):
            L, H, S = ql[:, half * 64:], qh[:, half * 32:], scales[:, half * 8:]
            for l in range(32):
                i = l // 16
                q1 = ((L[:, l] & 0xF) | (((H[:, l] >> 0) & 3) << 4)) - 32
                q2 = ((L[:, l + 32] & 0xF) | (((H[:, l] >> 2) & 3) << 4)) - 32
                q3 = ((L[:, l] >> 4) | (((H[:, l] >> 4) & 3) << 4)) - 32
                q4 = ((L[:, l + 32] >> 4) | (((H[:, l] >> 6) & 3) << 4)) - 32
                base = half * 128
                out[:, base + l] = d[:, 0] * S[:, i] * q1
                out[:, base + l + 32] = d[:, 0] * S[:, i + 2] * q2
                out[:, base + l + 64] = d[:, 0] * S[:, i + 4] * q3
                out[:, base + l + 96] = d[:, 0] * S[:, i + 6] * q4
        return out.reshape(-1)
    raise ValueError(kind)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows [first half | second half] -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_weights(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, {name: float64 (rows, cols) array}) from a GGUF file, via the raw tensor bytes."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arch = meta["general.architecture"]
    n_head, n_kv = meta[f"{arch}.attention.head_count"], meta[f"{arch}.attention.head_count_kv"]
    w = {}
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        a = dequantize(np.asarray(t.data), t.tensor_type.name, int(np.prod(shape))).reshape(shape).astype(np.float64)
        if t.name.endswith("attn_q.weight"):
            a = unpermute_qk(a, n_head)
        elif t.name.endswith("attn_k.weight"):
            a = unpermute_qk(a, n_kv)
        w[t.name] = a
    return meta, w


def llama_logits(meta: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """Plain LLaMA forward (pre-RMSNorm, RoPE on halves, GQA, SwiGLU) in float64: (T, vocab)."""
    a = meta["general.architecture"] + "."
    L, H, KV = meta[a + "block_count"], meta[a + "attention.head_count"], meta[a + "attention.head_count_kv"]
    eps, theta = meta[a + "attention.layer_norm_rms_epsilon"], meta[a + "rope.freq_base"]
    x = w["token_embd.weight"][ids]  # (T, d)
    T, d = x.shape
    hd = d // H

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * g

    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None]  # (T, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(v):  # (T, heads, hd)
        x1, x2 = v[..., : hd // 2], v[..., hd // 2:]
        c, s = cos[:, None], sin[:, None]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    causal = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(L):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).reshape(T, H, hd))
        k = rope((h @ w[p + "attn_k.weight"].T).reshape(T, KV, hd))
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, hd)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, d)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


# --- GGUF files as llama.cpp's convert_hf_to_gguf.py writes them, from a transformers model ---------
# (tensor names from gguf-py's tensor_mapping.py, layouts and metadata keys from the converter's
# per-architecture classes; written independently of lmzoo's loader)

_LAYER_NAMES = {  # HF module path inside a block -> GGUF tensor stem
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up",  # phi3: gate | up fused, stored as ffn_up
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "post_self_attn_layernorm": "post_attention_norm", "post_mlp_layernorm": "post_ffw_norm",  # GLM-4
    # Llama 4: feed_forward.* (a dense MLP, or a router + stacked experts + a shared expert)
    "feed_forward.gate_proj": "ffn_gate", "feed_forward.up_proj": "ffn_up", "feed_forward.down_proj": "ffn_down",
    "feed_forward.router": "ffn_gate_inp", "feed_forward.shared_expert.gate_proj": "ffn_gate_shexp",
    "feed_forward.shared_expert.up_proj": "ffn_up_shexp", "feed_forward.shared_expert.down_proj": "ffn_down_shexp",
    "mlp.gate": "ffn_gate_inp", "mlp.shared_expert_gate": "ffn_gate_inp_shexp",
    "mlp.shared_expert.gate_proj": "ffn_gate_shexp", "mlp.shared_expert.up_proj": "ffn_up_shexp",
    "mlp.shared_expert.down_proj": "ffn_down_shexp",
    # DeepSeek-V2/V3 (MLA, DeepSeekMoE)
    "self_attn.q_a_proj": "attn_q_a", "self_attn.q_a_layernorm": "attn_q_a_norm", "self_attn.q_b_proj": "attn_q_b",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a_mqa", "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    "mlp.shared_experts.gate_proj": "ffn_gate_shexp", "mlp.shared_experts.up_proj": "ffn_up_shexp",
    "mlp.shared_experts.down_proj": "ffn_down_shexp",
    # GPT-NeoX
    "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
    "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down",
    # BLOOM / Falcon
    "self_attention.query_key_value": "attn_qkv", "self_attention.dense": "attn_output",
    "ln_attn": "attn_norm_2", "ln_mlp": "attn_norm",  # Falcon-40B, as gguf-py's tensor_mapping names them
    # GPT-2 / GPT-J
    "ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k",
    "attn.v_proj": "attn_v", "attn.out_proj": "attn_output", "mlp.fc_in": "ffn_up", "mlp.fc_out": "ffn_down",
}
_TOP_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "gpt_neox.embed_in": "token_embd", "gpt_neox.final_layer_norm": "output_norm", "embed_out": "output",
    "transformer.word_embeddings": "token_embd", "transformer.word_embeddings_layernorm": "token_embd_norm",
    "transformer.ln_f": "output_norm", "transformer.wte": "token_embd", "transformer.wpe": "position_embd",
}
_LAYER_PREFIXES = ("model.layers.", "gpt_neox.layers.", "transformer.h.")


def _per_head_qkv_to_qkv(a: np.ndarray, n_head: int) -> np.ndarray:
    """BLOOM / GPT-NeoX fused rows (n_head, 3, hd) -> [all q; all k; all v] (the converter's reshuffle)."""
    x = a.reshape(n_head, 3, a.shape[0] // n_head // 3, *a.shape[1:])
    return np.concatenate([x[:, j].reshape(-1, *a.shape[1:]) for j in range(3)])


def _falcon_qkv_to_qkv(a: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    """Falcon's rows grouped per kv head (n_kv, q-per-kv + 2, hd) -> [q; k; v]."""
    hd = a.shape[0] // (n_head + 2 * n_kv)
    x = a.reshape(n_kv, n_head // n_kv + 2, hd, *a.shape[1:])
    q = x[:, :-2].reshape(-1, *a.shape[1:])
    return np.concatenate([q, x[:, -2].reshape(-1, *a.shape[1:]), x[:, -1].reshape(-1, *a.shape[1:])])


def hf_to_gguf(model, as_arch: str | None = None) -> tuple[str, dict, dict[str, np.ndarray]]:
    """(architecture, metadata without the architecture prefix, {GGUF name: float32 array}).
    as_arch="baichuan" writes a LLaMA model as Baichuan-7B's converter would (LLaMA with q, k, v
    fused as W_pack, which the converter splits and permutes like llama's)."""
    c = model.config
    mt = c.model_type
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tied = bool(getattr(c, "tie_word_embeddings", False))
    out: dict[str, np.ndarray] = {}
    qnorms: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for k, a in sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # causal-mask buffers, not weights
        if mt == "gpt2" and k.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            a = a.T  # Conv1D (in, out) -> (out, in)
        layer = next((p for p in _LAYER_PREFIXES if k.startswith(p)), None)
        if layer is None:
            mod, kind = k.rsplit(".", 1)
            if mod == "lm_head" and tied:
                continue  # not in a tied checkpoint's files
            out[f"{_TOP_NAMES[mod]}.{kind}"] = a
            continue
        i, rest = k[len(layer):].split(".", 1)
        if rest.endswith(("experts.gate_up_proj", "experts.down_proj")):  # stacked (E, rows, cols)
            if mt == "llama4_text":  # Llama4Model.modify_tensors: stored (E, in, out), transposed
                a = np.ascontiguousarray(a.transpose(0, 2, 1))
            if rest.endswith("gate_up_proj"):
                half = a.shape[1] // 2
                out[f"blk.{i}.ffn_gate_exps.weight"], out[f"blk.{i}.ffn_up_exps.weight"] = a[:, :half], a[:, half:]
            else:
                out[f"blk.{i}.ffn_down_exps.weight"] = a
            continue
        if "_layernorm.norms." in rest:  # StableLM's per-head q/k LayerNorms, stacked (n_head, hd)
            which, h = rest.split(".")[1], int(rest.split(".")[3])
            qnorms.setdefault((i, which), {})[h] = a
            continue
        if rest == "mlp.gate.e_score_correction_bias":  # V3's selection bias
            out[f"blk.{i}.exp_probs_b.bias"] = a
            continue
        if rest == "self_attn.kv_b_proj.weight":  # split per head into k_b (transposed) and v_b
            nope, v = c.qk_nope_head_dim, c.v_head_dim
            kv = a.reshape(c.num_attention_heads, nope + v, a.shape[-1])
            out[f"blk.{i}.attn_k_b.weight"] = np.ascontiguousarray(kv[:, :nope].transpose(0, 2, 1))
            out[f"blk.{i}.attn_v_b.weight"] = np.ascontiguousarray(kv[:, nope:])
            continue
        mod, kind = rest.rsplit(".", 1)
        stem = _LAYER_NAMES[mod]
        if stem == "attn_qkv" and mt in ("gpt_neox", "bloom"):
            a = _per_head_qkv_to_qkv(a, c.num_attention_heads)
        elif stem == "attn_qkv" and mt == "falcon":
            a = _falcon_qkv_to_qkv(a, c.num_attention_heads, _falcon_kv(c))
        elif mt in ("llama", "mixtral") and stem in ("attn_q", "attn_k"):
            a = permute_qk(a, c.num_attention_heads if stem == "attn_q" else c.num_key_value_heads)
        out[f"blk.{i}.{stem}.{kind}"] = a
    for (i, which), norms in qnorms.items():
        out[f"blk.{i}.attn_{which[0]}_norm.weight"] = np.stack([norms[h] for h in sorted(norms)])
    if as_arch == "chatglm":  # THUDM's layout: q, k, v fused as query_key_value ([q; k; v] rows)
        for i in range(c.num_hidden_layers):
            for kind in ("weight", "bias"):
                qkv = [out.pop(f"blk.{i}.attn_{x}.{kind}") for x in "qkv"]
                out[f"blk.{i}.attn_qkv.{kind}"] = np.concatenate(qkv)
    rope = getattr(c, "rope_parameters", None) or {}
    if mt == "llama" and rope.get("rope_type") == "llama3":  # LlamaModel.generate_extra_tensors
        out["rope_freqs.weight"] = llama3_rope_factors(rope, c.hidden_size // c.num_attention_heads)
    if mt == "phi3" and rope.get("rope_type") == "longrope":  # LongRoPE's divisors as two tensors
        out["rope_factors_long.weight"] = np.asarray(rope["long_factor"], np.float32)
        out["rope_factors_short.weight"] = np.asarray(rope["short_factor"], np.float32)
    if mt in ("gpt2", "bloom") and "output.weight" not in out:
        out["output.weight"] = out["token_embd.weight"]  # these converters duplicate the tied head
    arch, meta = _metadata(c)
    if as_arch == "chatglm":  # ChatGLMModel.set_gguf_parameters
        hd = c.head_dim
        meta = {"context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
                "feed_forward_length": c.intermediate_size, "block_count": c.num_hidden_layers,
                "attention.head_count": c.num_attention_heads, "attention.head_count_kv": c.num_key_value_heads,
                "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
                "rope.dimension_count": int(hd * c.rope_parameters.get("partial_rotary_factor", 0.5)),
                "rope.freq_base": float(c.rope_parameters["rope_theta"])}
        arch = as_arch
    if as_arch == "baichuan":  # BaichuanModel.set_gguf_parameters: no rope.freq_base
        meta = {k: v for k, v in meta.items() if k != "rope.freq_base"} | {"rope.dimension_count": meta.get(
            "attention.key_length", c.hidden_size // c.num_attention_heads)}
        arch = as_arch
    return arch, meta, out


def llama3_rope_factors(rope: dict, dim: int) -> np.ndarray:
    """Llama 3.1's RoPE rule as one divisor per frequency: 1 for short wavelengths, `factor` for long
    ones, a smooth blend between (Meta's published formula, which the converter tabulates)."""
    base, factor = rope["rope_theta"], rope["factor"]
    lo, hi = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope["original_max_position_embeddings"]
    out = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def _falcon_kv(c) -> int:
    if c.new_decoder_architecture:
        return c.num_kv_heads
    return 1 if c.multi_query else c.num_attention_heads


def _metadata(c) -> tuple[str, dict]:
    mt = c.model_type
    if mt == "llama4_text":  # LlamaModel.set_gguf_parameters + Llama4Model's (the MLP sizes swapped back)
        return "llama4", {
            "context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
            "feed_forward_length": c.intermediate_size_mlp, "block_count": c.num_hidden_layers,
            "attention.head_count": c.num_attention_heads, "attention.head_count_kv": c.num_key_value_heads,
            "rope.freq_base": float(c.rope_parameters["rope_theta"]),
            "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps), "attention.key_length": c.head_dim,
            "attention.value_length": c.head_dim, "rope.dimension_count": c.head_dim, "vocab_size": c.vocab_size,
            "expert_count": c.num_local_experts, "expert_used_count": c.num_experts_per_tok,
            "interleave_moe_layer_step": c.interleave_moe_layer_step,
            "expert_feed_forward_length": c.intermediate_size}
    if mt in ("qwen2_moe", "qwen3_moe", "phi3", "llama", "mixtral", "glm", "glm4", "qwen2", "qwen3"):
        hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        m = {"context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
             "feed_forward_length": c.intermediate_size, "block_count": c.num_hidden_layers,
             "attention.head_count": c.num_attention_heads, "attention.head_count_kv": c.num_key_value_heads,
             "rope.freq_base": float(c.rope_parameters["rope_theta"]),
             "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps)}
        if mt == "mixtral":  # LlamaModel.set_gguf_parameters (+ the base class's expert keys)
            m |= {"expert_count": c.num_local_experts, "expert_used_count": c.num_experts_per_tok,
                  "rope.dimension_count": hd, "vocab_size": c.vocab_size}
        if mt in ("qwen2_moe", "qwen3_moe"):
            m |= {"expert_used_count": c.num_experts_per_tok, "expert_count": c.num_experts,
                  "expert_feed_forward_length": c.moe_intermediate_size, "attention.key_length": hd,
                  "attention.value_length": hd}
            if mt == "qwen2_moe":
                m["expert_shared_feed_forward_length"] = c.shared_expert_intermediate_size
        if mt == "phi3":
            orig = c.original_max_position_embeddings
            m |= {"rope.dimension_count": hd, "rope.scaling.original_context_length": orig}
            scale = c.max_position_embeddings / orig
            if (c.rope_parameters or {}).get("rope_type") == "longrope" and scale > 1:
                m["rope.scaling.attn_factor"] = math.sqrt(1 + math.log(scale) / math.log(orig))
        if mt in ("glm", "glm4"):  # Glm4Model.set_gguf_parameters: the rotated part of each head
            m |= {"attention.key_length": hd, "attention.value_length": hd,
                  "rope.dimension_count": int(hd * c.rope_parameters.get("partial_rotary_factor", 0.5))}
        arch = {"qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "mixtral": "llama"}.get(mt, mt)
        return arch, m
    if mt in ("deepseek_v2", "deepseek_v3"):
        v3 = mt == "deepseek_v3"
        r = c.kv_lora_rank
        m = {"context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
             "feed_forward_length": c.intermediate_size, "block_count": c.num_hidden_layers,
             "attention.head_count": c.num_attention_heads, "attention.head_count_kv": 1,
             "rope.freq_base": float(c.rope_parameters["rope_theta"]),
             "attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
             "expert_used_count": c.num_experts_per_tok, "leading_dense_block_count": c.first_k_dense_replace,
             "vocab_size": c.vocab_size, "attention.kv_lora_rank": r,
             "attention.key_length": r + c.qk_rope_head_dim, "attention.value_length": r,
             "attention.key_length_mla": c.qk_nope_head_dim + c.qk_rope_head_dim,
             "attention.value_length_mla": c.v_head_dim, "expert_feed_forward_length": c.moe_intermediate_size,
             "expert_count": c.n_routed_experts, "expert_shared_count": c.n_shared_experts,
             "expert_weights_scale": float(c.routed_scaling_factor), "rope.dimension_count": c.qk_rope_head_dim,
             "expert_gating_func": 2 if v3 else 1}
        if c.q_lora_rank:
            m["attention.q_lora_rank"] = c.q_lora_rank
        if v3 and c.norm_topk_prob:
            m["expert_weights_norm"] = True
        if getattr(c, "n_group", None):
            m |= {"expert_group_count": c.n_group, "expert_group_used_count": c.topk_group}
        rope = c.rope_parameters
        if rope.get("rope_type") == "yarn":
            m |= {"rope.scaling.type": "yarn", "rope.scaling.factor": float(rope["factor"]),
                  "rope.scaling.original_context_length": rope["original_max_position_embeddings"]}
            if rope.get("mscale_all_dim"):
                m["rope.scaling.yarn_log_multiplier"] = 0.1 * rope["mscale_all_dim"]
        return "deepseek2", m
    hd = c.hidden_size // c.num_attention_heads if mt != "gptj" else c.n_embd // c.n_head
    if mt == "gpt_neox":
        return "gptneox", {
            "context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
            "block_count": c.num_hidden_layers, "feed_forward_length": c.intermediate_size,
            "rope.dimension_count": int(c.rope_parameters.get("partial_rotary_factor", 1.0) * hd),
            "attention.head_count": c.num_attention_heads, "use_parallel_residual": bool(c.use_parallel_residual),
            "attention.layer_norm_epsilon": float(c.layer_norm_eps)}
    if mt == "falcon":
        return "falcon", {
            "context_length": 2048, "embedding_length": c.hidden_size, "feed_forward_length": 4 * c.hidden_size,
            "block_count": c.num_hidden_layers, "attention.head_count": c.num_attention_heads,
            "attention.head_count_kv": _falcon_kv(c), "attention.layer_norm_epsilon": float(c.layer_norm_epsilon)}
    if mt == "bloom":
        return "bloom", {
            "context_length": getattr(c, "seq_length", c.hidden_size), "embedding_length": c.hidden_size,
            "feed_forward_length": 4 * c.hidden_size,
            "block_count": c.n_layer, "attention.head_count": c.n_head, "attention.head_count_kv": c.n_head,
            "attention.layer_norm_epsilon": float(c.layer_norm_epsilon)}
    if mt == "stablelm":
        return "stablelm", {
            "context_length": c.max_position_embeddings, "embedding_length": c.hidden_size,
            "block_count": c.num_hidden_layers, "feed_forward_length": c.intermediate_size,
            "rope.dimension_count": int(c.rope_parameters.get("partial_rotary_factor", 1.0) * hd),
            "attention.head_count": c.num_attention_heads, "attention.head_count_kv": c.num_key_value_heads,
            "use_parallel_residual": bool(c.use_parallel_residual),
            "attention.layer_norm_epsilon": float(c.layer_norm_eps)}
    if mt == "gpt2":
        return "gpt2", {
            "block_count": c.n_layer, "context_length": getattr(c, "n_ctx", c.n_positions), "embedding_length": c.n_embd,
            "feed_forward_length": 4 * c.n_embd, "attention.head_count": c.n_head,
            "attention.layer_norm_epsilon": float(c.layer_norm_epsilon)}
    if mt == "gptj":
        m = {"block_count": c.n_layer, "context_length": c.n_positions, "embedding_length": c.n_embd,
             "feed_forward_length": 4 * c.n_embd, "attention.head_count": c.n_head,
             "attention.layer_norm_epsilon": float(c.layer_norm_epsilon)}
        if c.rotary_dim and c.rotary_dim < hd:
            m["rope.dimension_count"] = c.rotary_dim
        return "gptj", m
    raise ValueError(mt)


def keeps_float(name: str, a: np.ndarray) -> bool:
    """Tensors llama.cpp leaves in F32 in a quantised file: vectors, norms, the expert routers."""
    return a.ndim < 2 or name.endswith("_norm.weight") or "ffn_gate_inp" in name


# byte offsets of the f16 scale fields (d, dmin) of the K-quant blocks, which random blocks keep small
K_SCALES = {"Q4_K": (0, 2), "Q6_K": (208,), "Q5_K": (0, 2), "Q3_K": (108,), "Q2_K": (80, 82)}


def random_k_blocks(rng, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """Valid random K-quant blocks for a tensor of `shape` (the gguf package cannot quantise K-quants)."""
    import gguf

    qk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    raw = rng.integers(0, 256, (*shape[:-1], shape[-1] // qk * size), dtype=np.uint8)
    small = np.frombuffer(np.float16(0.002).tobytes(), np.uint8)
    for o in K_SCALES[kind]:
        raw.reshape(-1, size)[:, o:o + 2] = small
    return raw


def write_gguf(path, arch: str, meta: dict, tensors: dict[str, np.ndarray], kind: str, rng=None) -> None:
    """Write `tensors` as `kind`: F32, F16, a block type the gguf package can quantise, a K-quant
    (random blocks from `rng`: the values then are the file's, not the tensors'), or "Q4_K_M"
    (llama.cpp's mix: Q6_K for attn_v and the down projections, Q4_K elsewhere)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for key, v in meta.items():
        key = f"{arch}.{key}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_string(key, str(v))
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if kind == "F32" or keeps_float(name, a):
            w.add_tensor(name, a)
        elif kind == "F16":
            w.add_tensor(name, a.astype(np.float16))
        else:
            k = kind
            if kind == "Q4_K_M":
                k = "Q6_K" if ("attn_v" in name or "ffn_down" in name) else "Q4_K"
            t = gguf.GGMLQuantizationType[k]
            if k in K_SCALES:
                w.add_tensor(name, random_k_blocks(rng, k, a.shape), raw_dtype=t)
            else:
                w.add_tensor(name, gguf.quants.quantize(a, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def round_values(a: np.ndarray, kind: str) -> np.ndarray:
    """The values `a` takes stored as `kind`, blocks along the last axis (as GGUF's run)."""
    import gguf

    if kind == "F32":
        return a.astype(np.float32)
    if kind == "F16":
        return a.astype(np.float16).astype(np.float32)
    t = gguf.GGMLQuantizationType[kind]
    return gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), t), t)


def round_to_(model, kind: str) -> None:
    """Give a transformers model the values its weights take in a `kind` GGUF file (quantise and
    dequantise along the input dimension, where GGUF's blocks run), so it is the exact reference for
    that file. Re-quantising such values reproduces them."""
    import torch

    if kind == "F32":
        return
    def rt(a: np.ndarray) -> np.ndarray:
        return round_values(a, kind)

    c = model.config
    conv1d = {n + ".weight" for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2 or name.endswith(("mlp.gate.weight", "shared_expert_gate.weight", "feed_forward.router.weight")):
                continue  # vectors and routers stay F32
            a = p.detach().float().numpy()
            if name in conv1d:  # stored transposed
                r = rt(a.T).T
            elif c.model_type == "llama4_text" and name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                r = rt(np.ascontiguousarray(a.transpose(0, 2, 1))).transpose(0, 2, 1)  # stored (E, in, out)
            elif name.endswith("kv_b_proj.weight"):  # stored as k_b (transposed) and v_b per head
                nope = c.qk_nope_head_dim
                kv = a.reshape(c.num_attention_heads, nope + c.v_head_dim, a.shape[-1])
                k = rt(np.ascontiguousarray(kv[:, :nope].transpose(0, 2, 1))).transpose(0, 2, 1)
                r = np.concatenate([k, rt(np.ascontiguousarray(kv[:, nope:]))], axis=1).reshape(a.shape)
            else:
                r = rt(a)
            p.copy_(torch.from_numpy(np.ascontiguousarray(r)))
