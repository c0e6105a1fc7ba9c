"""Multi-head attention with grouped key/value heads (MHA / GQA / MQA), optional per-head q/k norm,
sliding windows; keys/values go to the caller's cache (lmzoo.runtime.cache) when one is passed.

Shapes:  x (B, T, d)  ->  q (B, n_head, T, hd),  k, v (B, n_kv_head, T, hd)
GQA (Ainslie et al. 2023): each group of n_head / n_kv_head query heads shares one k/v head;
SDPA's `enable_gqa` broadcasts the groups without materialising repeated k/v.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.norm import L2Norm, PerHeadLayerNorm, RMSNorm
from lmzoo.nn.rope import apply_rope


@dataclass
class AttnInputs:
    """What every attention layer of one forward shares: RoPE tables (B, T, rope_dim), the log-n query
    scale (B, 1, T, 1), each query's cache slot (B or 1, T) and the cache step (lmzoo.runtime.cache)
    that writes this forward's keys/values and returns every visible one (None: no cache)."""

    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    q_scale: torch.Tensor | None = None
    q_slot: torch.Tensor | None = None
    kv: object | None = None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_size, self.kv_size = cfg.q_size, cfg.kv_size
        self.window = cfg.layer_window(layer)
        self.chunk = cfg.layer_chunk(layer)
        self.rope = cfg.layer_uses_rope(layer)
        self.rope_segments = 2 if cfg.position == "rope_2d" else 1
        # query temperature on NoPE layers (Llama 4)
        self.temp_floor = cfg.attn_temperature_floor if not self.rope else 0
        self.temp_scale = cfg.attn_temperature_scale
        self.scale = cfg.attn_scale
        self.softcap = cfg.attn_logit_softcap
        # fused projection: rows [0, q) are q, then k, then v
        self.qkv = nn.Linear(cfg.n_embd, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.q_size, cfg.n_embd, bias=cfg.attn_out_bias)
        norm_here = cfg.qk_norm and (cfg.qk_norm_layers is None or layer in cfg.qk_norm_layers)
        if norm_here and cfg.qk_norm_kind == "l2":
            self.q_norm = self.k_norm = L2Norm(eps=cfg.norm_eps)
        elif norm_here and cfg.qk_norm_kind == "layernorm_per_head":
            self.q_norm = PerHeadLayerNorm(cfg.n_head, cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = PerHeadLayerNorm(cfg.n_kv_head, cfg.head_dim, eps=cfg.norm_eps)
        elif norm_here:
            self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # rope_inplace(y, cos, sin, heads, head_dim): a kernel that rotates the q and k heads of the
        # fused qkv output in place, installed by a kernel transform (lmzoo.quant.gemv) on layers whose
        # RoPE is plain (one segment, nothing between the projection and the rotation)
        self.rope_inplace = None
        # decode_attention(qkv, kv_step, layer, mask) -> (B, T, q_size) or None: the cache write and
        # attention of a decode step (or a short prompt chunk) in one kernel call, installed by the
        # same transform; None = not applicable
        self.decode_attention = None

    def plain_rope(self) -> bool:
        return self.rope and self.rope_segments == 1 and self.q_norm is None and not self.temp_floor

    def cache_shapes(self, layout: str):
        """(heads, dim) of the cached keys and of the values."""
        return (self.n_kv_head, self.head_dim), (self.n_kv_head, self.head_dim)

    def forward(self, x: torch.Tensor, a: AttnInputs, mask: torch.Tensor | None,
                query_input: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). mask: bool or additive float (B or 1, 1, T, L), or None (causal)."""
        B, T, _ = x.shape
        qkv = self.qkv(x)
        roped = (self.rope_inplace is not None and a.cos is not None and query_input is None
                 and qkv.is_contiguous() and not (torch.is_grad_enabled() and qkv.requires_grad)
                 and self.rope_inplace(qkv, a.cos, a.sin, self.n_head + self.n_kv_head, self.head_dim))
        if (roped and self.decode_attention is not None and a.kv is not None and a.q_scale is None
                and not self.softcap):
            y = self.decode_attention(qkv, a.kv, self, mask)
            if y is not None:
                return self.o(y)
        q, k, v = qkv.split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        if query_input is not None:  # PanGu-alpha's query layer: q from another input, k and v from x
            q = self.qkv(query_input)[..., : self.q_size]
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.temp_floor:  # scale by absolute (cache slot) position, as the reference does
            slot = a.q_slot.float()  # (B or 1, T)
            t = torch.log1p(torch.floor((slot + 1.0) / self.temp_floor)) * self.temp_scale + 1.0
            q = (q * t[:, :, None, None]).to(q.dtype)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if a.cos is not None and self.rope and not roped:  # RoPE; ALiBi arrives inside `mask` as an additive bias
            q, k = (apply_rope(t, a.cos, a.sin, self.rope_segments) for t in (q, k))
        if a.q_scale is not None:  # per-position query scale (log-n attention), (B, 1, T, 1)
            q = q * a.q_scale.to(q.dtype)
        if a.kv is not None:
            k, v = a.kv.update(self.layer, k, v)
        if self.softcap:
            y = softcapped_attention(q, k, v, mask, scale=self.scale or self.head_dim ** -0.5, cap=self.softcap)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                is_causal=mask is None and T > 1,
                scale=self.scale,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        return self.o(y.transpose(1, 2).reshape(B, T, self.q_size))


def softcapped_attention(q, k, v, mask, *, scale: float, cap: float) -> torch.Tensor:
    """softmax(cap * tanh(q.k * scale / cap)) v, in float32 (Grok-1's attention; SDPA cannot cap).
    q (B, H, T, hd); k, v (B, H_kv, L, hd); mask: bool (B or 1, 1, T, L) or None (causal)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # GQA: each kv head serves `groups` consecutive query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    s = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, T, L)
    s = cap * torch.tanh(s / cap)
    T, L = s.shape[-2:]
    if mask is None:  # plain causal: query t sits at slot L - T + t
        mask = torch.ones(T, L, dtype=torch.bool, device=s.device).tril(L - T)
    s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.float()
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def build_mask(
    *,
    q_slot: torch.Tensor,
    L: int,
    key_valid: torch.Tensor | None,
    window: int | None,
    chunk: int | None = None,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    prefix_end: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B or 1, 1, T, L) of which cache slots each query may attend to.

    q_slot (B or 1, T): each query's slot. Key slot j is visible when j <= the query's slot (causal),
    when it holds a real token (key_valid (B, L); left padding is not), and when slot - j < window.
    chunk: only keys in the query's block of `chunk` positions (q_pos (B, T), k_pos (B, L): token
    positions). prefix_end (B,): slots below it are visible to every query (a prefix LM's
    bidirectional context, GLM). segments (B, L): only keys of the query's own segment (packed
    training rows; queries and keys share slots). A padded query still sees itself so no softmax row
    is empty.
    """
    q = q_slot[:, :, None]  # (B, T, 1)
    k = torch.arange(L, device=q_slot.device)[None, None, :]  # (1, 1, L)
    allowed = k <= q
    if window is not None:
        allowed = allowed & (q - k < window)
    if chunk is not None:
        qb = torch.div(q_pos, chunk, rounding_mode="floor")[:, :, None]
        kb = torch.div(k_pos[:, :L], chunk, rounding_mode="floor")[:, None, :]
        allowed = allowed & (qb == kb)
    if prefix_end is not None:
        allowed = allowed | (k < prefix_end[:, None, None])
    if segments is not None:
        allowed = allowed & (segments[:, :, None] == segments[:, None, :L])
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, :L].bool()) | (k == q)
    return allowed[:, None]
