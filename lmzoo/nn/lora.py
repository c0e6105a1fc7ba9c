"""LoRA and DoRA: a frozen projection plus a trainable low-rank update, as a transform of a built model.

LoRA (Hu et al. 2021):   y = W x + b + s * B A dropout(x)        A (r, in), B (out, r), B = 0 at start
                         s = alpha / r, or alpha / sqrt(r) with rsLoRA (Kalajievski 2023)
DoRA (Liu et al. 2024):  y = m / ||W + s B A||_row * (W + s B A) x + b      m (out,) starts at ||W||_row
                         the norm is detached from the graph (the paper's section 4.3, as peft does)

lmzoo fuses projections that checkpoints often keep apart (q, k, v -> attn.qkv; gate, up ->
mlp.gate_up), and some checkpoints store the fused rows in another order (GPT-NeoX interleaves heads).
A LoRA must mean the same function as the checkpoint's own adapter (PEFT's format puts one A and one
B on each of the checkpoint's modules), so a `LoraLinear` holds one (A, B) pair per checkpoint *part*,
computed in the checkpoint's row order and then permuted into lmzoo's:

    checkpoint rows  | q_proj (A_q, B_q) | k_proj (A_k, B_k) | v_proj (A_v, B_v) |   delta_ckpt (.., out)
    lmzoo row j      = checkpoint row rows[j]           (rows: None when the orders agree)

Parts the user did not target carry no adapter (their rows of the update are zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Part:
    """One of the checkpoint's modules inside a (possibly fused) lmzoo projection: its name in the
    checkpoint (e.g. 'model.layers.0.self_attn.q_proj') and its rows [start, end) in checkpoint order."""

    name: str
    start: int
    end: int


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear-like layer (float, quantised, or rows side by side)."""
    if isinstance(module, nn.Linear):
        return module.weight.shape[0], module.weight.shape[1]
    parts = getattr(module, "parts", None)
    if parts is not None:  # RowConcat: a fused projection quantised part by part
        shapes = [linear_shape(p) for p in parts]
        return sum(o for o, _ in shapes), shapes[0][1]
    return module.out_features, module.in_features


def dense_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight as a float (out, in) tensor (dequantised for int8/int4 layers)."""
    if isinstance(module, nn.Linear):
        return module.weight.to(dtype)
    parts = getattr(module, "parts", None)
    if parts is not None:
        return torch.cat([dense_weight(p, dtype) for p in parts])
    return module.dequantize(dtype)


def layer_bias(module: nn.Module) -> torch.Tensor | None:
    parts = getattr(module, "parts", None)
    if parts is not None:
        bs = [layer_bias(p) for p in parts]
        return None if any(b is None for b in bs) else torch.cat(bs)
    return module.bias


class LoraLinear(nn.Module):
    """`base` (frozen) plus LoRA/DoRA updates on the given checkpoint parts. See the module docstring."""

    def __init__(self, base: nn.Module, *, parts: list[Part], targets: list[str], rows: torch.Tensor | None,
                 r: int | dict[str, int], alpha: float | dict[str, float], dropout: float = 0.0, rslora: bool = False,
                 dora: bool = False) -> None:
        """r / alpha: one value, or one per targeted part name (PEFT's rank_pattern / alpha_pattern)."""
        super().__init__()
        out, inp = linear_shape(base)
        if parts[-1].end != out:
            raise ValueError(f"parts {parts} do not cover the {out} output rows of the layer")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.parts = parts
        self.targets = [p.name for p in parts if p.name in targets]
        self.ranks = [r[n] if isinstance(r, dict) else r for n in self.targets]
        self.alphas = [alpha[n] if isinstance(alpha, dict) else alpha for n in self.targets]
        if any(not isinstance(k, int) or k <= 0 for k in self.ranks):
            raise ValueError(f"LoRA rank must be a positive integer, got r={r}")
        self.rslora, self.dora = rslora, dora
        self.scalings = [a / math.sqrt(k) if rslora else a / k for k, a in zip(self.ranks, self.alphas)]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        dev = next(iter([*base.parameters(), *base.buffers()]), torch.empty(0)).device
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("inv_rows", None if rows is None else torch.argsort(rows), persistent=False)
        by_name = {p.name: p for p in parts}
        self._tparts = [by_name[n] for n in self.targets]  # the targeted parts, in target order
        # PEFT's initialisation: A Kaiming-uniform (a = sqrt(5), nn.Linear's), B zero -> the update starts at 0
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for name, k in zip(self.targets, self.ranks):
            p = by_name[name]
            a = torch.empty(k, inp, device=dev)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A.append(nn.Parameter(a))
            self.lora_B.append(nn.Parameter(torch.zeros(p.end - p.start, k, device=dev)))
        self.magnitude = nn.ParameterList()
        if dora:
            with torch.no_grad():
                w = self._ckpt_weight(torch.float32)
                for name in self.targets:
                    p = by_name[name]
                    self.magnitude.append(nn.Parameter(w[p.start:p.end].norm(dim=1)))

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def out_features(self) -> int:
        return linear_shape(self.base)[0]

    @property
    def in_features(self) -> int:
        return linear_shape(self.base)[1]

    def _ckpt_weight(self, dtype) -> torch.Tensor:
        """The base weight in checkpoint row order, (out, in)."""
        w = dense_weight(self.base, dtype)
        return w if self.inv_rows is None else w.index_select(0, self.inv_rows)

    def _to_lmzoo(self, delta_ckpt_pieces: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Assemble per-part updates (.., rows_p) in checkpoint order, zeros elsewhere; permute to lmzoo's."""
        pieces = []
        for p in self.parts:
            t = delta_ckpt_pieces.get(p.name)
            pieces.append(t if t is not None else like.new_zeros(*like.shape[:-1], p.end - p.start))
        d = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
        return d if self.rows is None else d.index_select(-1, self.rows)

    def _dora_scales(self, dtype) -> list[torch.Tensor]:
        """m / ||W + s B A||_row per targeted part, the norm detached (DoRA section 4.3)."""
        w = self._ckpt_weight(dtype)
        out = []
        for p, A, B, m, sc in zip(self._tparts, self.lora_A, self.lora_B, self.magnitude, self.scalings):
            norm = (w[p.start:p.end] + sc * (B.to(dtype) @ A.to(dtype)).detach()).norm(dim=1).detach()
            out.append(m.to(dtype) / norm)
        return out

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.targets:
            return y
        h = self.dropout(x)
        dt = x.dtype
        # the scale on the rank-r product (B, T, r), not on the (B, T, out) update: out / r times fewer
        # multiplies for the same value (peft scales the update; equal up to rounding)
        lora = {p.name: F.linear(F.linear(h, A.to(dt)) * sc, B.to(dt))
                for p, A, B, sc in zip(self._tparts, self.lora_A, self.lora_B, self.scalings)}
        if self.dora:
            # peft: (scale - 1) * base_without_bias + scale * lora, the base recomputed on the dropped-out
            # input when dropout is active
            bias = layer_bias(self.base)
            if isinstance(self.dropout, nn.Identity) or not self.training:
                base_nb = (y - bias.to(dt)) if bias is not None else y
                base_ckpt = base_nb if self.inv_rows is None else base_nb.index_select(-1, self.inv_rows)
            else:
                base_ckpt = F.linear(h, self._ckpt_weight(dt))
            for p, s in zip(self._tparts, self._dora_scales(dt)):
                lora[p.name] = (s - 1) * base_ckpt[..., p.start:p.end] + s * lora[p.name]
        return y + self._to_lmzoo(lora, y)

    # --- merge ------------------------------------------------------------------------------------
    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The (out, in) weight that computes base + update in one matrix, lmzoo row order; differentiable
        in the adapter (MLA's latent cache folds kv_b into its queries through this)."""
        w = self._ckpt_weight(dtype)
        scales = self._dora_scales(dtype) if self.dora else None
        pieces = {}
        for i, (p, A, B, sc) in enumerate(zip(self._tparts, self.lora_A, self.lora_B, self.scalings)):
            wp = w[p.start:p.end] + sc * (B.to(dtype) @ A.to(dtype))
            pieces[p.name] = wp if scales is None else wp * scales[i][:, None]
        full = torch.cat([pieces.get(p.name, w[p.start:p.end]) for p in self.parts])
        return full if self.rows is None else full.index_select(0, self.rows)

    def merge(self) -> nn.Linear:
        """A plain nn.Linear equal to this layer (the update folded into the weight)."""
        out, inp = linear_shape(self.base)
        bias = layer_bias(self.base)
        with torch.no_grad():
            w = self.dequantize(torch.float32)
        dtype = self.base.weight.dtype if isinstance(self.base, nn.Linear) else torch.float32
        lin = nn.Linear(inp, out, bias=bias is not None, device=w.device, dtype=dtype)
        lin.weight.data.copy_(w)
        if bias is not None:
            lin.bias.data.copy_(bias)
        return lin

    def extra_repr(self) -> str:
        kind = "dora" if self.dora else "lora"
        return f"{kind} r={self.ranks} alpha={self.alphas} targets={self.targets}"


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA/DoRA update into its base weight, in place; returns the model."""
    for name, m in list(lora_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.merge())
    return model
