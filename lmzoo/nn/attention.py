"""Multi-head attention with grouped key/value heads (MHA / GQA / MQA), optional per-head q/k norm,
sliding windows and a preallocated KV cache.

Shapes:  x (B, T, d)  ->  q (B, n_head, T, hd),  k, v (B, n_kv_head, T, hd)
GQA (Ainslie et al. 2023): each group of n_head / n_kv_head query heads shares one k/v head;
SDPA's `enable_gqa` broadcasts the groups without materialising repeated k/v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.norm import L2Norm, PerHeadLayerNorm, RMSNorm
from lmzoo.nn.rope import apply_rope


class KVCache(nn.Module):
    """Static cache: (B, n_kv_head, max_len, hd) buffers written in place at slot indices.

    Slots are shared by the batch (left padding keeps every row aligned); positions for RoPE are
    per row and handled by the caller.
    """

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, *, v_dim: int | None = None,
                 dtype, device) -> None:
        super().__init__()
        shape = (batch, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape[:-1] + (v_dim or head_dim,), dtype=dtype, device=device),
                             persistent=False)

    def update(self, start, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(start, torch.Tensor):  # static shapes (lmzoo.static_decode): write, return it all
            slots = start + torch.arange(k.shape[2], device=k.device)
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)
            return self.k, self.v
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
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
        self.cache: KVCache | None = None

    def make_cache(self, batch: int, max_len: int, *, dtype, device) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, dtype=dtype, device=device)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        start: int | None = None,
        q_scale: torch.Tensor | None = None,
        query_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """start=None: no cache. Otherwise write k/v at cache slots [start, start+T) and attend to
        slots [0, start+T)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
        if query_input is not None:  # PanGu-alpha's query layer: q from another input, k and v from x
            q = self.qkv(query_input)[..., : self.q_size]
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.temp_floor:  # scale by absolute (cache slot) position, as the reference does
            slot = torch.arange(T, device=x.device, dtype=torch.float32) + (start or 0)
            t = torch.log1p(torch.floor((slot + 1.0) / self.temp_floor)) * self.temp_scale + 1.0
            q = (q * t.view(1, T, 1, 1)).to(q.dtype)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if cos is not None and self.rope:  # RoPE; ALiBi arrives inside `mask` as an additive bias
            q, k = apply_rope(q, cos, sin, self.rope_segments), apply_rope(k, cos, sin, self.rope_segments)
        if q_scale is not None:  # per-position query scale (log-n attention), (B, 1, T, 1)
            q = q * q_scale.to(q.dtype)
        if start is not None:
            k, v = self.cache.update(start, k, v)
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
    q_start: int,
    T: int,
    key_valid: torch.Tensor | None,
    window: int | None,
    device,
    chunk: int | None = None,
    positions: torch.Tensor | None = None,
    prefix_end: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean mask (B or 1, 1, T, L) of which cache slots each query may attend to.

    Query t sits at slot q_start + t; key slot j is visible when j <= slot (causal), when it is not
    padding (key_valid, (B, L)), and when slot - j < window. A padded query still sees itself so that
    no row of the softmax is empty. prefix_end (B,): slots below it are also visible to every query
    (a prefix LM's bidirectional context, GLM).
    """
    L = q_start + T
    q_slot = torch.arange(q_start, L, device=device)[:, None]
    k_slot = torch.arange(L, device=device)[None, :]
    allowed = k_slot <= q_slot
    if window is not None:
        allowed = allowed & (q_slot - k_slot < window)
    allowed = allowed[None, None]  # (1, 1, T, L)
    if chunk is not None:  # same block of `chunk` positions only; positions (B or 1, L) per slot
        block = torch.div(positions, chunk, rounding_mode="floor")
        allowed = allowed & (block[:, None, q_start:L, None] == block[:, None, None, :L])
    if prefix_end is not None:
        allowed = allowed | (k_slot < prefix_end[:, None, None, None])
    if key_valid is not None:
        allowed = (allowed & key_valid[:, None, None, :L].bool()) | (k_slot == q_slot)
    return allowed
