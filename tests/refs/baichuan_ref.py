"""An independent reference for Baichuan-13B / Baichuan2-13B (no transformers class exists), written
from the published modeling_baichuan.py: RMSNorm, fused W_pack, ALiBi added to the scaled scores with
slopes from the ALiBi paper, SwiGLU, and Baichuan2's NormHead (row-normalised LM head). Plain torch,
full recomputation, no cache — nothing shared with lmzoo."""

from __future__ import annotations

import math

import torch


def slopes(n: int) -> torch.Tensor:
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n).is_integer():
        return torch.tensor(power_of_2(n))
    closest = 2 ** math.floor(math.log2(n))
    return torch.tensor(power_of_2(closest) + power_of_2(2 * closest)[0::2][: n - closest])


def forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, *, norm_head: bool) -> torch.Tensor:
    d, H, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    hd = d // H
    B, T = ids.shape

    def rms(x, w):
        v = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(v + eps))

    # ALiBi mask as Baichuan builds it: slope * key position, plus -inf above the diagonal
    alibi = slopes(H)[:, None, None] * torch.arange(T)[None, None, :]  # (H, 1, T)
    mask = torch.full((T, T), float("-inf")).triu(1)[None] + alibi  # (H, T, T)
    x = state["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, state[p + "input_layernorm.weight"])
        q, k, v = (h @ state[p + "self_attn.W_pack.weight"].T).split(d, dim=-1)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask[None]
        o = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + o @ state[p + "self_attn.o_proj.weight"].T
        h = rms(x, state[p + "post_attention_layernorm.weight"])
        g, u = h @ state[p + "mlp.gate_proj.weight"].T, h @ state[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ state[p + "mlp.down_proj.weight"].T
    x = rms(x, state["model.norm.weight"])
    head = state["lm_head.weight"]
    if norm_head:
        head = head / head.norm(dim=-1, keepdim=True)
    return x @ head.T


def greedy(state, cfg, ids: torch.Tensor, n: int, *, norm_head: bool) -> torch.Tensor:
    out = ids
    for _ in range(n):
        nxt = forward(state, cfg, out, norm_head=norm_head)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[:, ids.shape[1]:]
