"""Multi-head Latent Attention (MLA; DeepSeek-V2, arXiv 2405.04434).

Keys and values are rebuilt from one small latent per token instead of being projected per head:

    q      = W_q x                      or  W_qb rmsnorm(W_qa x)         (q LoRA, rank q_lora_rank)
    [c, r] = W_kva x                    c: latent (kv_lora_rank), r: one shared RoPE key (qk_rope)
    [k_nope, v] = W_kvb rmsnorm(c)      per head: (qk_nope_head_dim), (v_head_dim)
    k      = [k_nope | rope(r)]          the RoPE part is the same for every head ("decoupled" key)
    q      = [q_nope | rope(q_rope)]

This module caches the expanded per-head k and v (the simple, exact form); caching only the latent
c and r is the memory-saving option the fast-inference work adds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.attention import KVCache
from lmzoo.nn.norm import RMSNorm
from lmzoo.nn.rope import apply_rope


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.n_head, self.nope, self.rope_dim, self.v_dim = (
            cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim)
        self.qk_dim = self.nope + self.rope_dim
        self.kv_rank = cfg.kv_lora_rank
        self.window = cfg.layer_window(layer)
        self.chunk = None
        self.scale = cfg.attn_scale
        if cfg.q_lora_rank:
            self.q_a = nn.Linear(cfg.n_embd, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, eps=cfg.norm_eps)
            self.q_b = nn.Linear(cfg.q_lora_rank, self.n_head * self.qk_dim, bias=False)
            self.q = None
        else:
            self.q = nn.Linear(cfg.n_embd, self.n_head * self.qk_dim, bias=False)
        self.kv_a = nn.Linear(cfg.n_embd, self.kv_rank + self.rope_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = RMSNorm(self.kv_rank, eps=cfg.norm_eps)
        self.kv_b = nn.Linear(self.kv_rank, self.n_head * (self.nope + self.v_dim), bias=False)
        self.o = nn.Linear(self.n_head * self.v_dim, cfg.n_embd, bias=cfg.attn_out_bias)
        self.cache: KVCache | None = None

    def make_cache(self, batch: int, max_len: int, *, dtype, device) -> KVCache:
        return KVCache(batch, self.n_head, max_len, self.qk_dim, v_dim=self.v_dim, dtype=dtype, device=device)

    def forward(self, x, cos, sin, mask, start: int | None = None, q_scale=None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x) if self.q is not None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = q.view(B, T, self.n_head, self.qk_dim).transpose(1, 2)  # (B, H, T, qk)
        q_nope, q_rot = q.split((self.nope, self.rope_dim), dim=-1)
        c, r = self.kv_a(x).split((self.kv_rank, self.rope_dim), dim=-1)
        kv = self.kv_b(self.kv_a_norm(c)).view(B, T, self.n_head, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
        r = apply_rope(r[:, None], cos, sin)  # (B, 1, T, rope): one key shared by all heads
        q = torch.cat([q_nope, apply_rope(q_rot, cos, sin)], dim=-1)
        k = torch.cat([k_nope, r.expand(B, self.n_head, T, self.rope_dim)], dim=-1)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        if start is not None:
            k, v = self.cache.update(start, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.v_dim))
