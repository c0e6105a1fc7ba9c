"""An independent reference for Qwen (first generation; `qwen` remote code, no transformers class),
written from the published modeling_qwen.py: RMSNorm, fused c_attn with bias, rotate-half RoPE on
rotary_pct of each head, MLP c_proj(w1(x) * silu(w2(x))); past seq_length its dynamic NTK (get_ntk_alpha,
alpha fixed at prefill) and log-n query scaling (logn_list). Plain torch."""

from __future__ import annotations

import math

import torch


def get_ntk_alpha(true_seq_len: int, seq_length: int) -> float:
    context_value = math.log(true_seq_len / seq_length, 2) + 1
    return max(2 ** math.ceil(context_value) - 1, 1)


def forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, past=None, cached_alpha=None):
    """Logits (B, T, V). With past (per-layer (k, v), (B, S, H, hd)) or cached_alpha given, returns
    (logits, presents, alpha) as the original's incremental decode does: the NTK alpha is computed
    from the sequence length when there is no past (prefill) and reused afterwards; log-n scaling
    multiplies the queries by logn_list[slot] after the cache concatenation."""
    incremental = past is not None or cached_alpha is not None
    d, H, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    hd = d // H
    rot = int(hd * cfg["rotary_pct"])
    L0 = cfg["seq_length"]
    B, T = ids.shape
    past_len = past[0][0].shape[1] if past is not None else 0
    kv_seq_len = T + past_len
    if not cfg.get("use_dynamic_ntk"):
        alpha = 1.0
    elif past is not None:
        alpha = cached_alpha
    else:
        alpha = get_ntk_alpha(kv_seq_len, L0)
    base = cfg["rotary_emb_base"] * alpha ** (rot / (rot - 2))
    inv = 1.0 / (base ** (torch.arange(0, rot, 2).float() / rot))
    f = torch.outer(torch.arange(kv_seq_len).float(), inv)
    emb = torch.cat([f, f], -1)[-T:]
    cos, sin = emb.cos()[None, :, None], emb.sin()[None, :, None]  # (1, T, 1, rot)
    logn = torch.tensor([math.log(i, L0) if i > L0 else 1.0 for i in range(past_len + 1, kv_seq_len + 1)])

    def rope(t):  # (B, T, H, hd)
        r, p = t[..., :rot], t[..., rot:]
        x1, x2 = r.chunk(2, -1)
        return torch.cat([r * cos + torch.cat([-x2, x1], -1) * sin, p], -1)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    causal = torch.full((kv_seq_len, kv_seq_len), float("-inf")).triu(1)[-T:]
    x = state["transformer.wte.weight"][ids]
    presents = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = rms(x, state[p + "ln_1.weight"])
        qkv = h @ state[p + "attn.c_attn.weight"].T + state[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, T, H, hd) for t in qkv.split(d, -1))
        q, k = rope(q), rope(k)
        if past is not None:
            k, v = torch.cat([past[i][0], k], 1), torch.cat([past[i][1], v], 1)
        presents.append((k, v))
        if cfg.get("use_logn_attn"):
            q = q * logn[None, :, None, None]
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd) + causal
        o = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(B, T, d)
        x = x + o @ state[p + "attn.c_proj.weight"].T
        h = rms(x, state[p + "ln_2.weight"])
        a1, a2 = h @ state[p + "mlp.w1.weight"].T, h @ state[p + "mlp.w2.weight"].T
        x = x + (a1 * torch.nn.functional.silu(a2)) @ state[p + "mlp.c_proj.weight"].T
    logits = rms(x, state["transformer.ln_f.weight"]) @ state["lm_head.weight"].T
    return (logits, presents, alpha) if incremental else logits


def greedy(state, cfg, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding with the original's cache (alpha fixed at prefill)."""
    logits, past, alpha = forward(state, cfg, ids, cached_alpha=0)
    out = []
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, past, alpha = forward(state, cfg, nxt, past=past, cached_alpha=alpha)
    return torch.cat(out, 1)
