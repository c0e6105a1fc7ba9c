"""CPU decode acceleration as a transform on a built model.

A decode step multiplies one activation row per sequence by every weight matrix: a GEMV, bounded by
how fast the weights stream from memory. On the 2-core machines we measured, PyTorch's BLAS GEMV
reached 13-18 GB/s on decode-sized fp32 matrices, single-threaded, while the memory system delivers
~30 GB/s to two threads; `f32_linear` in lmzoo/quant/kernels/cpu.cpp streams each row once through FMA
lanes with the rows split across threads, and reaches 26-31 GB/s on the same matrices
(benchmarks/RESULTS.md). Prefill (many rows) is compute-bound and stays with BLAS, and so does any
product autograd records (the kernel has no backward): training a model with the kernels on gives
the same gradients as without.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.nn.attention import Attention
from lmzoo.nn.mlp import MLP
from lmzoo.nn.norm import RMSNorm
from lmzoo.quant.kernels import cpu_kernels
from lmzoo.quant.layers import needs_autograd

GEMV_MAX_ROWS = 16


# The kernel as a PyTorch custom op, so torch.compile traces through it instead of breaking the
# graph at every Linear (lmzoo.runtime.compiled). Eager calls skip the dispatcher and call it directly.
@torch.library.custom_op("lmzoo::f32_linear", mutates_args=())
def f32_linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return cpu_kernels().f32_linear(x, w)


@f32_linear_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], w.shape[0]))


class GemvLinear(nn.Linear):
    """nn.Linear whose few-row fp32 CPU products go through lmzoo's GEMV kernel (same weights,
    same state dict; other inputs take F.linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32 \
                and not needs_autograd(x, self.weight, self.bias):
            rows = x.numel() // x.shape[-1]
            k = cpu_kernels() if rows <= GEMV_MAX_ROWS else None
            if k is not None and self.weight.is_contiguous():
                x2 = x.reshape(rows, x.shape[-1]).contiguous()
                y = f32_linear_op(x2, self.weight) if torch.compiler.is_compiling() else k.f32_linear(x2, self.weight)
                if self.bias is not None:
                    y = y + self.bias
                return y.view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def _inference_f32(x: torch.Tensor) -> bool:
    """A float32 CPU tensor that autograd does not track, outside torch.compile (which traces the
    reference ops instead of calling into the extension)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.compiler.is_compiling())


class FusedRMSNorm(RMSNorm):
    """RMSNorm whose float32 CPU inference runs as one kernel call (same arithmetic; the reference
    expression's six ATen ops otherwise); anything autograd records takes RMSNorm's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _inference_f32(x) and not needs_autograd(self.weight) and self.weight.dtype == torch.float32:
            return cpu_kernels().rms_norm(x.contiguous(), self.weight, self.eps)
        return super().forward(x)


class FusedSwiGLU(MLP):
    """A SwiGLU MLP whose float32 CPU inference computes silu(gate) * up in one kernel call (instead
    of chunk + silu + mul); anything autograd records takes MLP's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate_up(x)
        if _inference_f32(h) and h.is_contiguous():
            return self.down(cpu_kernels().silu_mul(h))
        gate, up = h.chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


def _rope_inplace(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> bool:
    """Attention.rope_inplace: rotate q and k inside the fused qkv output; False = not applicable here
    (the layer then applies RoPE itself)."""
    if not (_inference_f32(y) and y.dim() == 3 and cos.dtype == torch.float32 and cos.is_contiguous()
            and sin.is_contiguous()):
        return False
    cpu_kernels().rope_heads_(y, cos, sin, heads, head_dim)
    return True


def _decode_attention(qkv: torch.Tensor, step, attn: Attention, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Attention.decode_attention: write the new keys/values into the cache and attend, one kernel call
    (float32 eager caches with boolean or no masks; None = not applicable, the layer goes its own way)."""
    c = getattr(step, "cache", None)
    if c is None or c.layout != "standard" or step.starts is None:
        return None
    k, v = c.k[attn.layer], c.v[attn.layer]
    if k.dtype != torch.float32 or v is None or not (k.is_contiguous() and v.is_contiguous()):
        return None
    if mask is not None:
        if mask.dtype != torch.bool:
            return None  # an additive bias (ALiBi)
        mask = mask.reshape(mask.shape[0], mask.shape[-1]).contiguous()
    return cpu_kernels().decode_attention(qkv, k, v, step.idx, step.q_slot.reshape(-1), step.end, mask,
                                          attn.n_head, attn.n_kv_head, attn.scale or attn.head_dim ** -0.5)


def use_cpu_kernels(model: nn.Module) -> nn.Module:
    """Swap every plain nn.Linear for GemvLinear, RMSNorm for FusedRMSNorm and SwiGLU MLPs for
    FusedSwiGLU in place (class changes: no weights move), and give plain-RoPE attention layers the
    in-place rotation kernel and the one-token cache attention kernel.
    Does nothing when the kernels cannot be built."""
    if cpu_kernels() is None:
        return model
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = GemvLinear
        elif type(m) is RMSNorm:
            m.__class__ = FusedRMSNorm
        elif type(m) is MLP and m.gated and m.act is F.silu:
            m.__class__ = FusedSwiGLU
        elif isinstance(m, Attention) and m.plain_rope():
            m.rope_inplace = _rope_inplace
            m.decode_attention = _decode_attention
    return model
