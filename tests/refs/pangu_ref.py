"""An independent reference for PanGu-alpha in its PyTorch port's layout (`gpt_pangu`, written from
that modeling code): GPT-2 pre-LN blocks with separate q/k/v projections (biases), exact GELU, learned
positions; ln_f is applied *before* the last block, whose attention query is q_proj(wqe[position])
(a learned query-position embedding, not normalised) while its keys and values come from ln_1 of the
hidden state; the last block's output goes straight to the (tied) head. Masked scores are -10000.
Plain torch, full recomputation — nothing shared with lmzoo."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    d, H, L, eps = cfg["hidden_size"], cfg["num_heads"], cfg["num_layers"], cfg["layer_norm_epsilon"]
    hd = d // H
    B, T = ids.shape
    pos = torch.arange(T)[None].expand(B, T)

    def ln(x, name):
        return F.layer_norm(x, (d,), state[name + ".weight"], state[name + ".bias"], eps)

    def lin(x, name):
        return F.linear(x, state[name + ".weight"], state[name + ".bias"])

    def heads(t):
        return t.view(B, T, H, hd).transpose(1, 2)

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = state["transformer.wte.weight"][ids] + state["transformer.wpe.weight"][pos]
    query_embeds = state["transformer.wqe.weight"][pos]
    for i in range(L):
        p = f"transformer.h.{i}."
        if i == L - 1:
            x = ln(x, "transformer.ln_f")
        h = ln(x, p + "ln_1")
        q = heads(lin(query_embeds if i == L - 1 else h, p + "attn.q_proj"))
        k, v = heads(lin(h, p + "attn.k_proj")), heads(lin(h, p + "attn.v_proj"))
        w = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        w = torch.where(causal, w, torch.tensor(-1e4)).softmax(-1)
        a = (w @ v).transpose(1, 2).reshape(B, T, d)
        x = x + lin(a, p + "attn.c_proj")
        m = lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
        x = x + m
    return x @ state["transformer.wte.weight"].T


def greedy(state, cfg, ids: torch.Tensor, n: int) -> torch.Tensor:
    out = ids
    for _ in range(n):
        nxt = forward(state, cfg, out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[:, ids.shape[1]:]
