"""An independent reference for GGUF models, written from the published ggml block formats
(ggml-quants.c) and the LLaMA equations — numpy only, sharing no code with lmzoo or the gguf package's
dequantisers. Used by the GGUF tests to check lmzoo's loader end to end."""

from __future__ import annotations

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
