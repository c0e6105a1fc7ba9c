"""Rotary position embedding (RoPE, Su et al. 2021) and its context-extension variants.

Each pair of dims (i, i + d/2) of a head is rotated by the angle  pos * inv_freq[i], with
inv_freq[i] = theta^(-2i/d). This is the "rotate-half" (GPT-NeoX / HF LLaMA) layout:

    x = [x1 | x2]      (each d/2 wide)
    rope(x) = [x1*cos - x2*sin | x2*cos + x1*sin]

Scaling variants change only inv_freq (and, for YaRN, a scalar applied to cos/sin):
    linear   inv_freq / factor
    dynamic  theta' = theta * (factor*L/L0 - (factor-1))^(d/(d-2)) once L > L0  (NTK-aware)
    ntk_alpha theta' = theta * alpha^(d/(d-2)), alpha = max(2^ceil(log2(L/L0) + 1) - 1, 1), L fixed at
             prefill and per row (Qwen v1, modeling_qwen.py: get_ntk_alpha / RotaryEmbedding)
    llama3   low frequencies / factor, high ones kept, a smooth ramp between
    yarn     NTK-by-parts ramp between extrapolated and interpolated frequencies
    longrope per-frequency divisors (short set within the trained context, long set beyond)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmzoo.config import ModelConfig


def _base_inv_freq(theta: float, dim: int, device=None) -> torch.Tensor:
    exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (theta**exponent)


def ntk_alpha(length: int, trained: int) -> int:
    """Qwen v1's NTK alpha for a prompt of `length` tokens: 1 up to the trained length, then 3, 7, 15,
    ... each time the length doubles (get_ntk_alpha in modeling_qwen.py)."""
    return max(2 ** math.ceil(math.log2(length / trained) + 1) - 1, 1)


def inv_frequencies(cfg: ModelConfig, seq_len: int | None = None, device=None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (rope_dim/2,) and the cos/sin multiplier for `cfg` at `seq_len`."""
    s = cfg.rope_scaling
    dim = cfg.rope_dim
    theta = cfg.rope_theta
    if s.kind == "none":
        return _base_inv_freq(theta, dim, device), 1.0
    if s.kind == "linear":
        return _base_inv_freq(theta, dim, device) / s.factor, 1.0
    if s.kind == "dynamic":
        L0 = s.original_max_position
        L = max(seq_len or L0, L0)
        theta = theta * ((s.factor * L / L0) - (s.factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(theta, dim, device), 1.0
    if s.kind == "ntk_alpha":
        return _base_inv_freq(theta * ntk_alpha(seq_len or 1, s.original_max_position) ** (dim / (dim - 2)), dim,
                              device), 1.0
    if s.kind == "llama3":
        inv = _base_inv_freq(theta, dim, device)
        low_wavelen = s.original_max_position / s.low_freq_factor
        high_wavelen = s.original_max_position / s.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
        smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if s.kind == "yarn":
        pos_freqs = theta ** (torch.arange(0, dim, 2, device=device).float() / dim)
        extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (s.factor * pos_freqs)

        def correction_dim(n_rot: float) -> float:
            return dim * math.log(s.original_max_position / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

        low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
        if s.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = ((torch.arange(dim // 2, device=device).float() - low) / (high - low)).clamp(0, 1)
        extrapolation_weight = 1 - ramp
        inv = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
        mscale = s.attention_factor
        if mscale is None:
            mscale = 1.0 if s.factor <= 1 else 0.1 * math.log(s.factor) + 1.0
        return inv, float(mscale)
    if s.kind == "longrope":
        long = seq_len is not None and seq_len > s.original_max_position
        ext = torch.tensor(s.long_factor if long else s.short_factor, dtype=torch.float32, device=device)
        exponent = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        mscale = s.attention_factor
        if mscale is None:
            mscale = 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_position))
        return 1.0 / (ext * theta**exponent), float(mscale)
    raise ValueError(f"unknown rope scaling {s.kind!r}")


class RotaryEmbedding(nn.Module):
    """Turns position ids (B, T) into cos/sin tables (B, T, rope_dim).

    2-D RoPE (GLM): position ids (B, 2, T) -- token position and block position -- give tables
    (B, T, 2 * rope_dim): [table of the position | table of the block position]; `apply_rope(...,
    segments=2)` rotates each half of the head with its own half of the table.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.reset_buffers()

    def reset_buffers(self, device=None) -> None:
        if device is None and torch.empty(0).device.type == "meta":
            # built on the meta device (checkpoint loading): compute the small table for real on the
            # CPU (the loader recomputes it on the target device); meta arithmetic goes through
            # torch._refs, which imports torch._dynamo (about a second of start-up)
            device = "cpu"
        inv, self.scaling = inv_frequencies(self.cfg, device=device)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """lengths (B,): each row's prompt length at prefill (ntk_alpha scaling only)."""
        inv, scaling = self.inv_freq, self.scaling
        s = self.cfg.rope_scaling
        if s.kind == "ntk_alpha" and lengths is not None:  # one set of frequencies per row
            inv = torch.stack([inv_frequencies(self.cfg, int(n), device=positions.device)[0] for n in lengths.tolist()])
            inv = inv[:, None, :]  # (B, 1, rope_dim/2) broadcasts over T
        if s.kind in ("dynamic", "longrope"):
            # both depend on the current length (as HF computes them, per forward pass)
            seq_len = int(positions.max()) + 1
            if seq_len > s.original_max_position:
                inv, scaling = inv_frequencies(self.cfg, seq_len, device=positions.device)
        if positions.dim() == 3:  # 2-D RoPE: (B, 2, T) -> one table per half, side by side
            cos, sin = zip(*(self._tables(positions[:, i], inv, scaling, dtype) for i in range(positions.shape[1])))
            return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)
        return self._tables(positions, inv, scaling, dtype)

    def _tables(self, positions, inv, scaling, dtype):
        if self.cfg.rope_table_dtype == "float16":
            # ChatGLM-6B's RotaryEmbedding(precision=torch.half): inverse frequencies, positions, angles
            # and cos/sin all in float16 -- reproduced because the released weights expect it
            freqs = positions[..., None].half() * inv.half()
        else:  # angles in float32 regardless of the model dtype (bf16 angles lose whole radians)
            freqs = positions[..., None].float() * inv.float()  # (B, T, rope_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rope_dim)
        return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: int = 1) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of x (B, n_head, T, head_dim); the rest pass through.

    segments=2 (GLM's 2-D RoPE): the rotated dims are two independent halves, each rotate-half'ed
    within itself:  [a1 a2 | b1 b2] -> [a1 c - a2 s, a2 c + a1 s | b1 c' - b2 s', b2 c' + b1 s'].
    """
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, rot) broadcasts over heads
    xr, xp = (x[..., :rot], x[..., rot:]) if rot < x.shape[-1] else (x, None)
    if segments == 1:
        x1, x2 = xr.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
    else:
        xs = xr.unflatten(-1, (segments, 2, rot // (2 * segments)))  # (..., segment, half, dims)
        rotated = torch.stack((-xs[..., 1, :], xs[..., 0, :]), dim=-2).flatten(-3)
    out = xr * cos + rotated * sin
    return out if xp is None else torch.cat((out, xp), dim=-1)
