"""Multi-head Latent Attention (MLA; DeepSeek-V2, arXiv 2405.04434).

Keys and values are rebuilt from one small latent per token instead of being projected per head:

    q      = W_q x                      or  W_qb rmsnorm(W_qa x)         (q LoRA, rank q_lora_rank)
    [c, r] = W_kva x                    c: latent (kv_lora_rank), r: one shared RoPE key (qk_rope)
    [k_nope, v] = W_kvb rmsnorm(c)      per head: (qk_nope_head_dim), (v_head_dim)
    k      = [k_nope | rope(r)]          the RoPE part is the same for every head ("decoupled" key)
    q      = [q_nope | rope(q_rope)]

Two cache forms (chosen per cache: runtime.KVCache(..., mla_cache=...); ModelConfig.mla_cache is the default):
  expanded  per-head k and v, (B, H, L, qk) + (B, H, L, v): plain attention, what HF caches
  latent    only c_norm = rmsnorm(c) and rope(r), (B, L, kv_rank + rope): 2*H*(qk+v)/(kv_rank+rope)
            times smaller (DeepSeek-V2: 4096+... -> 576 values per token per layer). Attention runs
            in the latent space with W_kvb split per head into W_uk (nope x kv_rank) and W_uv
            (v x kv_rank) and "absorbed" (DeepSeek-V2 paper, sec. 2.1.3):
                q_nope . k_nope = q_nope . (W_uk c) = (W_uk^T q_nope) . c        q_lat (B, H, T, kv_rank)
                out_h = sum_j p_j W_uv c_j = W_uv (sum_j p_j c_j)                  o_lat (B, H, T, kv_rank)
            so every head attends over the same (B, 1, L, kv_rank + rope) keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.attention import AttnInputs
from lmzoo.nn.norm import RMSNorm
from lmzoo.nn.rope import apply_rope


class MLAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.nope, self.rope_dim, self.v_dim = (
            cfg.n_head, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim)
        self.qk_dim = self.nope + self.rope_dim
        self.kv_rank = cfg.kv_lora_rank
        self.window = cfg.layer_window(layer)
        self.chunk = None
        self.scale = cfg.attn_scale
        if cfg.q_lora_rank:
            self.q_a = nn.Linear(cfg.n_embd, cfg.q_lora_rank, bias=cfg.qkv_bias)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank, eps=cfg.latent_norm_eps)
            self.q_b = nn.Linear(cfg.q_lora_rank, self.n_head * self.qk_dim, bias=False)
            self.q = None
        else:
            self.q = nn.Linear(cfg.n_embd, self.n_head * self.qk_dim, bias=False)
        self.kv_a = nn.Linear(cfg.n_embd, self.kv_rank + self.rope_dim, bias=cfg.qkv_bias)
        self.kv_a_norm = RMSNorm(self.kv_rank, eps=cfg.latent_norm_eps)
        self.kv_b = nn.Linear(self.kv_rank, self.n_head * (self.nope + self.v_dim), bias=False)
        self.o = nn.Linear(self.n_head * self.v_dim, cfg.n_embd, bias=cfg.attn_out_bias)

    def cache_shapes(self, layout: str):
        """(heads, dim) of the cached keys and of the values (None: the latent form caches keys only;
        their first kv_rank dims are the values)."""
        if layout == "latent":
            return (1, self.kv_rank + self.rope_dim), None
        return (self.n_head, self.qk_dim), (self.n_head, self.v_dim)

    def forward(self, x, a: AttnInputs, mask) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x) if self.q is not None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = q.view(B, T, self.n_head, self.qk_dim).transpose(1, 2)  # (B, H, T, qk)
        q_nope, q_rot = q.split((self.nope, self.rope_dim), dim=-1)
        c, r = self.kv_a(x).split((self.kv_rank, self.rope_dim), dim=-1)
        cos, sin, q_scale = a.cos, a.sin, a.q_scale
        if a.kv is not None and a.kv.cache.layout == "latent":
            return self._latent_forward(q_nope, q_rot, self.kv_a_norm(c), r, a, mask)
        kv = self.kv_b(self.kv_a_norm(c)).view(B, T, self.n_head, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
        r = apply_rope(r[:, None], cos, sin)  # (B, 1, T, rope): one key shared by all heads
        q = torch.cat([q_nope, apply_rope(q_rot, cos, sin)], dim=-1)
        k = torch.cat([k_nope, r.expand(B, self.n_head, T, self.rope_dim)], dim=-1)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        if a.kv is not None:
            k, v = a.kv.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                           scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.v_dim))

    def _latent_forward(self, q_nope, q_rot, c, r, a: AttnInputs, mask) -> torch.Tensor:
        B, H, T, _ = q_nope.shape
        cos, sin, q_scale = a.cos, a.sin, a.q_scale
        q_rot = apply_rope(q_rot, cos, sin)
        k = torch.cat([c, apply_rope(r[:, None], cos, sin)[:, 0]], dim=-1)[:, None]  # (B, 1, T, kv_rank + rope)
        k, _ = a.kv.update(self.layer, k, None)  # the cache holds k only; its first kv_rank dims are the values
        scale = self.scale or self.qk_dim ** -0.5
        if T > 1:  # prefill: many queries, so expand the keys/values once (as the expanded form does)
            L = k.shape[2]
            kv = self.kv_b(k[:, 0, :, : self.kv_rank]).view(B, L, H, self.nope + self.v_dim).transpose(1, 2)
            k_nope, v = kv.split((self.nope, self.v_dim), dim=-1)
            q = torch.cat([q_nope, q_rot], dim=-1)
            k_full = torch.cat([k_nope, k[..., self.kv_rank:].expand(B, H, L, self.rope_dim)], dim=-1)
            if q_scale is not None:
                q = q * q_scale.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k_full, v, attn_mask=mask, is_causal=mask is None, scale=scale)
            return self.o(y.transpose(1, 2).reshape(B, T, H * self.v_dim))
        # decode: absorb W_kvb into the query and the output, attend over the latents directly
        w = self.kv_b.dequantize(q_nope.dtype) if hasattr(self.kv_b, "dequantize") else self.kv_b.weight
        w = w.view(H, self.nope + self.v_dim, self.kv_rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope:]  # (H, nope, kv_rank), (H, v, kv_rank)
        q = torch.cat([torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk), q_rot], dim=-1)  # (B, H, 1, kv_rank + rope)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        # every head attends over the same single key head: fold the heads into query rows,
        # (B, 1, H, D), so attention is one (H x D) @ (D x L) product instead of H copies of the keys
        if mask is not None:
            mask = mask.expand(B, 1, 1, -1).transpose(1, 2).expand(B, 1, H, -1)
        o_lat = F.scaled_dot_product_attention(q.reshape(B, 1, H, -1), k, k[..., : self.kv_rank], attn_mask=mask,
                                               scale=scale).view(B, H, 1, self.kv_rank)
        y = torch.einsum("bhtr,hvr->bhtv", o_lat, w_uv)  # the value projection applied after attention
        return self.o(y.transpose(1, 2).reshape(B, 1, H * self.v_dim))
