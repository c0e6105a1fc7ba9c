"""CPU decode acceleration as a transform on a built model.

A decode step multiplies one activation row per sequence by every weight matrix: a GEMV, bounded by
how fast the weights stream from memory. On the 2-core machines we measured, PyTorch's BLAS GEMV
reached 13-18 GB/s on decode-sized fp32 matrices, single-threaded, while the memory system delivers
~30 GB/s to two threads; `float_linear` in lmzoo/quant/kernels/cpu.cpp streams each row once through FMA
lanes with the rows split across threads, and reaches 26-31 GB/s on the same matrices
(benchmarks/RESULTS.md). Prefill (many rows) is compute-bound and stays with BLAS, and so does any
product autograd records (the kernel has no backward): training a model with the kernels on gives
the same gradients as without.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from lmzoo.nn.attention import Attention
from lmzoo.nn.block import PreNormBlock
from lmzoo.nn.mlp import MLP
from lmzoo.nn.norm import RMSNorm
from lmzoo.nn.transformer import Transformer
from lmzoo.quant.hugepages import into_huge_pages
from lmzoo.quant.kernels import cpu_kernels
from lmzoo.quant.layers import GEMV_MAX_ROWS, HalfLinear, Int4Linear, Int8Linear, by_chunks, float_linear_op, needs_autograd


class GemvLinear(nn.Linear):
    """nn.Linear whose few-row fp32 CPU products go through lmzoo's GEMV kernel (same weights,
    same state dict; other inputs take F.linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32 \
                and not needs_autograd(x, self.weight, self.bias):
            rows = x.numel() // x.shape[-1]
            # few rows, or one token a sequence (decode: the same product in a batch of any size)
            one = x.dim() > 2 and x.shape[-2] == 1 and not torch.compiler.is_compiling()
            k = cpu_kernels() if rows <= GEMV_MAX_ROWS or one else None
            if k is not None and self.weight.is_contiguous():
                x2 = x.reshape(rows, x.shape[-1]).contiguous()
                w = self.weight
                y = float_linear_op(x2, w) if torch.compiler.is_compiling() else by_chunks(lambda c: k.float_linear(c, w), x2)
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


def _rope_inplace(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, head_dim: int) -> bool:
    """Attention.rope_inplace: rotate q and k inside the fused qkv output; False = not applicable here
    (the layer then applies RoPE itself)."""
    if not (_inference_f32(y) and y.dim() == 3 and cos.dtype == torch.float32 and cos.is_contiguous()
            and sin.is_contiguous()):
        return False
    cpu_kernels().rope_heads_(y, cos, sin, heads, head_dim)
    return True


# Prompt chunks of up to this many tokens attend through the decode kernel too, one query a row with
# a causal mask: SDPA's fixed cost is ~80 us a layer for a 45-token chat prompt (2.6 ms of a ~19 ms
# prefill on the default model), the kernel's a fraction of it. Longer prompts take SDPA (its blocked
# GEMMs reuse each key block across queries; the kernel reads each query's keys anew).
PREFILL_MAX_T = 64


def _cache_args(step, attn: Attention, mask: torch.Tensor | None, T: int = 1) -> tuple | None:
    """The cache arguments of the decode attention kernel for this layer and step, its rows being the
    step's B x T queries: (k, v, rows, slots, end, mask (B*T or 1, end) bool or None); None when the
    kernel cannot serve it (float32 or float16 eager caches of the standard layout, boolean or no
    masks)."""
    c = getattr(step, "cache", None)
    if c is None or c.layout != "standard" or step.starts is None:
        return None
    k, v = c.k[attn.layer], c.v[attn.layer]
    if k.dtype not in (torch.float32, torch.float16) or v is None or not (k.is_contiguous() and v.is_contiguous()):
        return None
    rows, slots = step.idx, step.q_slot.reshape(-1)
    if mask is not None:
        if mask.dtype != torch.bool:
            return None  # an additive bias (ALiBi)
        if T > 1:  # (B or 1, 1, T, end) -> a row per query
            mask = mask.expand(len(rows), 1, T, mask.shape[-1])
        mask = mask.reshape(-1, mask.shape[-1]).contiguous()
    elif T > 1:  # causal over the cache slots: query t sees the slots up to its own
        mask = torch.arange(step.end, device=slots.device)[None, :] <= slots[:, None]
    if T > 1:
        rows = rows.repeat_interleave(T)
    return k, v, rows, slots, step.end, mask


def _decode_attention(qkv: torch.Tensor, step, attn: Attention, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Attention.decode_attention: write the new keys/values into the cache and attend, one kernel call
    for a decode step or a short prompt chunk, qkv (B, T, W) -> (B, T, q_size) (None = not applicable,
    the layer goes its own way)."""
    B, T, W = qkv.shape
    if T > PREFILL_MAX_T:
        return None
    args = _cache_args(step, attn, mask, T)
    if args is None:
        return None
    y = cpu_kernels().decode_attention(qkv.reshape(B * T, 1, W), *args, attn.n_head, attn.n_kv_head,
                                       attn.scale or attn.head_dim ** -0.5)
    return y.view(B, T, -1)


def _linear_spec(m: nn.Module) -> tuple | None:
    """(kind, tensors, group, bias) of a linear layer for the fused decode block, as its own forward
    computes a one-token step (the row kernel at any batch size; None: its forward would take another
    path, or it is not one of ours)."""
    t = type(m)
    if t is GemvLinear:
        p = m._parameters
        w = p["weight"]
        if w.dtype != torch.float32 or not w.is_contiguous():
            return None
        return 0, (w,), 0, p["bias"]
    if t is Int4Linear or t is Int8Linear or t is HalfLinear:
        return *m.kernel_spec(1), m.bias  # one token a sequence
    return None


def _swiglu(m: nn.Module) -> bool:
    return type(m) is MLP and m.gated and m.act is F.silu


def _step_inputs_fit(x: torch.Tensor, a) -> bool:
    """Whether a one-token step with these inputs can run fused: nothing records autograd,
    torch.compile is not tracing (it traces the modules), float32 CPU activations, plain RoPE angles
    and a KV cache, and no global forward hook that a fused call would skip."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or a.kv is None or a.cos is None
                or a.q_scale is not None or x.dtype != torch.float32 or x.device.type != "cpu"
                or not x.is_contiguous() or a.cos.dtype != torch.float32
                or not (a.cos.is_contiguous() and a.sin.is_contiguous())
                or _global_forward_hooks or _global_forward_pre_hooks)


def _block_parts(block: nn.Module) -> tuple | None:
    """(attn, mlp, norms, linears, the kernel's weight arguments, its head arguments) of a block whose
    one-token step the kernel reproduces — a PreNormBlock with FusedRMSNorm norms, plain-RoPE
    attention with the cache kernel, a SwiGLU MLP, linears on their kernel paths, no forward hooks on
    any of these — else None. Submodules are read from `_modules` (nn.Module's __getattr__ costs a microsecond a name)."""
    if type(block) is not PreNormBlock:
        return None
    bm = block._modules
    attn, mlp, n1, n2 = bm["attn"], bm["mlp"], bm["attn_norm"], bm["mlp_norm"]
    if (type(n1) is not FusedRMSNorm or type(n2) is not FusedRMSNorm or not _swiglu(mlp)
            or type(attn) is not Attention or attn.decode_attention is not _decode_attention
            or attn.rope_inplace is not _rope_inplace or attn.softcap):
        return None
    am, mm = attn._modules, mlp._modules
    lins = (am["qkv"], am["o"], mm["gate_up"], mm["down"])
    specs = [_linear_spec(m) for m in lins]
    w1, w2 = n1._parameters["weight"], n2._parameters["weight"]
    if (None in specs or w1.dtype != torch.float32 or w2.dtype != torch.float32
            or any(m._forward_hooks or m._forward_pre_hooks for m in (block, attn, mlp, n1, n2) + lins)):
        return None
    args = (w1, n1.eps, w2, n2.eps, [s[0] for s in specs], [s[2] for s in specs],
            [t for s in specs for t in s[1]], [s[3] for s in specs])
    heads = (attn.n_head, attn.n_kv_head, attn.scale or attn.head_dim ** -0.5)
    return attn, mlp, (n1, n2), lins, args, heads


def _decode_block(block: PreNormBlock, x: torch.Tensor, a, mask: torch.Tensor | None) -> torch.Tensor | None:
    """PreNormBlock.decode_step: the block's one-token step in one kernel call, when the step's inputs
    and every part of the block allow it (_step_inputs_fit, _block_parts); None otherwise (the
    modules run)."""
    parts = _block_parts(block) if _step_inputs_fit(x, a) else None
    if parts is None:
        return None
    attn, _, _, _, args, heads = parts
    cache = _cache_args(a.kv, attn, mask)
    if cache is None:
        return None
    return cpu_kernels().prenorm_decode_block(x, *args, a.cos, a.sin, *cache, *heads)


# model -> (still_valid(), DecodeStack or None): each model's blocks prepared for decode_stack, kept
# while nothing they were built from has changed (weakly: a stack never keeps its model alive). A
# stack holds its tensors: a model changed, moved or switched to training lets go of the old ones at
# its next one-token step.
_STACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MISSING = object()
# the instance attributes of a layer's modules that its fused step depends on (besides submodules,
# parameters and buffers)
_ATTRS = ("decode_step", "decode_attention", "rope_inplace", "act", "gated", "eps", "activations")


def _build_stack(model: nn.Module) -> tuple:
    """(still_valid, stack): every layer's _block_parts in a DecodeStack (None when a layer does not
    fuse or the layers attend in more than one pattern), and a check that all it was built from is
    as it was: the same modules of the same classes, the same tensors in every linear and norm, the
    same activation modes, attention functions, norm epsilons and decode steps, forward hooks on the
    same modules (~60 checks a layer, against ~20 us for building a layer's arguments anew). A layer
    that does not fuse is watched whole (all its modules), so that the stack is tried again once it
    would."""
    same: list[tuple[dict, str, object]] = []  # d.get(key) is obj
    types: list[tuple[nn.Module, type]] = []
    hooks: list[tuple[dict, bool]] = []  # whether each module had hooks

    def still_valid() -> bool:
        return (all(d.get(k, _MISSING) is o for d, k, o in same) and all(type(m) is t for m, t in types)
                and all(bool(h) is had for h, had in hooks))

    def watch(m: nn.Module, attrs: tuple[str, ...] = _ATTRS) -> None:
        types.append((m, type(m)))
        hooks.extend((h, bool(h)) for h in (m._forward_hooks, m._forward_pre_hooks))
        for d in (m._modules, m._parameters, m._buffers):
            same.extend((d, k, v) for k, v in d.items())
        same.extend((m.__dict__, a, m.__dict__.get(a, _MISSING)) for a in attrs)

    layers = model._modules.get("layers")
    same.append((model._modules, "layers", layers))
    stack = cpu_kernels().DecodeStack() if len(getattr(model, "patterns", ())) == 1 and layers is not None else None
    for i, (name, block) in enumerate(layers._modules.items() if stack is not None else ()):
        same.append((layers._modules, name, block))
        parts = _block_parts(block) if block.decode_step is _decode_block else None
        if parts is None or block.attn.layer != i:
            for m in block.modules():
                watch(m)
            stack = None
            break
        attn, mlp, norms, lins, args, heads = parts
        stack.add(*args, *heads)
        for m, attrs in ((block, ("decode_step",)), (attn, ("decode_attention", "rope_inplace")),
                         (mlp, ("act", "gated")), *((n, ("eps",)) for n in norms),
                         *((lin, ("activations",)) for lin in lins)):
            watch(m, attrs)
    return still_valid, stack


def _decode_stack(model: nn.Module, x: torch.Tensor, a, masks: dict) -> torch.Tensor | None:
    """Transformer.decode_layers: one token a row through every layer in one kernel call (DecodeStack),
    when every layer fuses (_block_parts) and they share one attention pattern; None otherwise (the
    layers run one by one, each still fused where it can be)."""
    if len(masks) != 1 or not _step_inputs_fit(x, a):
        _STACKS.pop(model, None)  # not used on this path: let go of the tensors it holds
        return None
    entry = _STACKS.get(model)
    if entry is None or not entry[0]():
        entry = _STACKS[model] = _build_stack(model)
    stack = entry[1]
    if stack is None:
        return None
    cache = _cache_args(a.kv, model._modules["layers"]._modules["0"]._modules["attn"], next(iter(masks.values())))
    if cache is None:
        return None
    c = a.kv.cache  # every layer's keys and values (the kernel checks each layer's like the first's)
    return stack.run(x, a.cos, a.sin, c.k, c.v, *cache[2:])


def use_cpu_kernels(model: nn.Module, *, huge_pages: bool = False) -> nn.Module:
    """Swap every plain nn.Linear for GemvLinear and RMSNorm for FusedRMSNorm in place (class
    changes: no weights move), give plain-RoPE attention layers the in-place rotation kernel and the
    one-token cache attention kernel, pre-norm blocks the fused one-token step (used when every
    part of the block is one of these), and the model the step through all its layers in one call.
    huge_pages: move the linear layers' weights (`streamed_weights`; quantised layers' tiles packed
    now) into transparent huge pages (lmzoo.quant.hugepages): decode reads them faster, at a load-time
    cost that depends on the machine. Does nothing when the kernels cannot be built."""
    if cpu_kernels() is None:
        return model
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = GemvLinear
        elif type(m) is RMSNorm:
            m.__class__ = FusedRMSNorm
        elif isinstance(m, Attention) and m.plain_rope():
            m.rope_inplace = _rope_inplace
            m.decode_attention = _decode_attention
        elif type(m) is PreNormBlock:
            m.decode_step = _decode_block
        elif isinstance(m, Transformer):
            m.decode_layers = _decode_stack
    if huge_pages:
        into_huge_pages(t for m in model.modules() for t in streamed_weights(m))
    return model


def streamed_weights(m: nn.Module) -> tuple[torch.Tensor, ...]:
    """The tensors a decode step reads whole from module `m` (not its children): a linear layer's
    weights in the form its kernel multiplies (quantised layers' tiles, packed now where the kernels
    take tiles)."""
    if isinstance(m, (Int8Linear, Int4Linear)):
        return m.tiles_now() or tuple(getattr(m, n) for n in m.ROWS)
    if isinstance(m, HalfLinear):
        return (m.w,)
    if isinstance(m, GemvLinear):
        return (m.weight,)
    return ()
