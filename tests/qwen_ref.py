"""An independent reference for Qwen (first generation; `qwen` remote code, no transformers class),
written from the published modeling_qwen.py within its trained context: RMSNorm, fused c_attn with
bias, rotate-half RoPE on rotary_pct of each head, MLP c_proj(w1(x) * silu(w2(x))). Plain torch."""

from __future__ import annotations

import math

import torch


def forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    d, H, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_epsilon"]
    hd = d // H
    rot = int(hd * cfg["rotary_pct"])
    B, T = ids.shape
    inv = 1.0 / (cfg["rotary_emb_base"] ** (torch.arange(0, rot, 2).float() / rot))
    f = torch.outer(torch.arange(T).float(), inv)
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos()[None, :, None], emb.sin()[None, :, None]  # (1, T, 1, rot)

    def rope(t):  # (B, T, H, hd)
        r, p = t[..., :rot], t[..., rot:]
        x1, x2 = r.chunk(2, -1)
        return torch.cat([r * cos + torch.cat([-x2, x1], -1) * sin, p], -1)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    causal = torch.full((T, T), float("-inf")).triu(1)
    x = state["transformer.wte.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.h.{i}."
        h = rms(x, state[p + "ln_1.weight"])
        qkv = h @ state[p + "attn.c_attn.weight"].T + state[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, T, H, hd) for t in qkv.split(d, -1))
        q, k = rope(q), rope(k)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(hd) + causal
        o = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(B, T, d)
        x = x + o @ state[p + "attn.c_proj.weight"].T
        h = rms(x, state[p + "ln_2.weight"])
        a1, a2 = h @ state[p + "mlp.w1.weight"].T, h @ state[p + "mlp.w2.weight"].T
        x = x + (a1 * torch.nn.functional.silu(a2)) @ state[p + "mlp.c_proj.weight"].T
    return rms(x, state["transformer.ln_f.weight"]) @ state["lm_head.weight"].T
