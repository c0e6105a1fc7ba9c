"""Losses computed from hidden states, so the (tokens x vocab) logits never exist all at once.

    h (B, T, d) --rows with a target--> (N, d) --norm--> chunks of `chunk` rows --head--> (chunk, V)

`token_losses_sum` fuses the LM head with the cross-entropy (the fused-linear-CE of Liger-Kernel /
Apple's "Cut Your Losses", done chunk by chunk in PyTorch): each chunk's logits are made, turned into
the loss and into the gradients of the head's input and weight right away, and dropped. Peak memory
is one chunk of logits instead of N x V (4 GiB of fp32 logits, and as much again for their gradient,
for a 128k vocabulary and 8k target tokens), with no recomputation in the backward pass:

    p = softmax(z),  dL/dz = p - onehot(y)      dL/dh = (dL/dz) W * s,   dL/dW = (dL/dz)^T h * s
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.train.data import IGNORE


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(s * (h_i W^T + b), y_i), its gradients computed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, chunk: int, scale: float, dtype):
        # `dtype`: the matmuls' (the autocast dtype, or float32); the softmax and every sum in float32
        need_w = weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        dh = torch.empty_like(h, dtype=torch.float32)
        dw = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        db = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        w = weight.to(dtype)
        b = None if bias is None else bias.float()
        total = h.new_zeros((), dtype=torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            for s in range(0, h.shape[0], chunk):
                hc, yc = h[s:s + chunk].to(dtype), y[s:s + chunk]
                z = F.linear(hc, w).float()  # (chunk, V)
                if b is not None:
                    z += b
                if scale != 1.0:
                    z *= scale
                # log-sum-exp and softmax in place of the logits, one exp pass (logsumexp and a softmax
                # would take two, and a temporary the size of the logits)
                z_y = z.gather(1, yc[:, None])[:, 0]
                top = z.amax(dim=-1, keepdim=True)
                e = z.sub_(top).exp_()
                norm = e.sum(dim=-1, keepdim=True)
                total += (norm.log()[:, 0] + top[:, 0] - z_y).sum()
                g = e.div_(norm)  # softmax
                g[torch.arange(len(yc), device=g.device), yc] -= 1.0
                if scale != 1.0:
                    g *= scale
                if need_b:
                    db += g.sum(0)
                if dtype == torch.float32:
                    torch.mm(g, w, out=dh[s:s + chunk])
                    if need_w:
                        dw.addmm_(g.t(), hc)
                else:  # half-precision products, accumulated in float32 across chunks
                    g = g.to(dtype)
                    dh[s:s + chunk] = g @ w
                    if need_w:
                        dw += g.t() @ hc
        ctx.save_for_backward(dh, dw, db)
        ctx.dtypes = (h.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad):
        dh, dw, db = ctx.saved_tensors
        th, tw, tb = ctx.dtypes
        return ((dh * grad).to(th), None if dw is None else (dw * grad).to(tw),
                None if db is None else (db * grad).to(tb), None, None, None, None)


def _head(model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's weight (V, d) and bias as tensors (a quantised head dequantised, without grad)."""
    head = model.lm_head
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    return head.dequantize(torch.float32), getattr(head, "bias", None)


def token_losses_sum(model, hidden: torch.Tensor, targets: torch.Tensor, *, chunk: int = 256) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the tokens that have a target, and their count."""
    keep = targets != IGNORE
    h, y = hidden[keep], targets[keep]
    n = int(y.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    if not torch.is_grad_enabled():  # evaluation: the loss alone
        total = sum(F.cross_entropy(model.logits(h[s:s + chunk]).float(), y[s:s + chunk], reduction="sum")
                    for s in range(0, n, chunk))
        return total, n
    weight, bias = _head(model)
    scale = float(model.config.logit_scale)
    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
    return _LinearCrossEntropy.apply(model.head_input(h), weight, bias, y, chunk, scale, dtype), n


def sequence_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor, *, chunk: int = 1024) -> torch.Tensor:
    """Summed log-probability of each row's target tokens, (B,) (DPO's completion log-probs)."""
    B = targets.shape[0]
    keep = targets != IGNORE
    rows = torch.arange(B, device=targets.device)[:, None].expand_as(targets)[keep]
    h, y = hidden[keep], targets[keep]
    out = hidden.new_zeros(B, dtype=torch.float32)
    for s in range(0, int(y.numel()), chunk):
        logp = -F.cross_entropy(model.logits(h[s:s + chunk]).float(), y[s:s + chunk], reduction="none")
        out = out.index_add(0, rows[s:s + chunk], logp)
    return out
