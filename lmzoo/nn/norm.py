"""Normalisation layers, chosen by `ModelConfig.norm`."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight.

    Like the LLaMA reference, the statistic is computed in float32 and the result is cast back to the
    input dtype *before* the weight multiply, so bf16/fp16 runs match HF bit for bit.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def build_norm(kind: str, dim: int, *, eps: float) -> nn.Module:
    """The one place a norm name becomes a module."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}")


class PerHeadLayerNorm(nn.Module):
    """A bias-free LayerNorm with a separate weight for every head (StableLM-2's q/k norm).
    Input (..., n_head, head_dim); weight stored flat as (n_head * head_dim,)."""

    def __init__(self, n_head: int, head_dim: int, *, eps: float) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.eps = n_head, head_dim, eps
        self.weight = nn.Parameter(torch.ones(n_head * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.layer_norm(x, (self.head_dim,), eps=self.eps)
        return x * self.weight.view(self.n_head, self.head_dim)


class L2Norm(nn.Module):
    """Weightless RMS normalisation, x / sqrt(mean(x^2) + eps) in float32 (Llama 4's q/k norm)."""

    def __init__(self, *, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
