"""Losses computed from hidden states, so the (tokens x vocab) logits never exist all at once.

    h (B, T, d) --pick rows with a target--> (N, d) --chunks of `chunk` rows--> head -> logits (chunk, V)
                                                                                -> cross-entropy sum

Each chunk's logits are recomputed in the backward pass (activation checkpointing), so peak memory
is one chunk of logits instead of N x V: for a 128k-vocabulary model and 8k target tokens that is
4 GiB of fp32 logits (and as much again for their gradient) down to `chunk` x V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lmzoo.train.data import IGNORE


def _chunk_ce_sum(model, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model.logits(h).float(), y, reduction="sum")


def token_losses_sum(model, hidden: torch.Tensor, targets: torch.Tensor, *, chunk: int = 1024) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the tokens that have a target, and their count."""
    keep = targets != IGNORE
    h, y = hidden[keep], targets[keep]
    n = int(y.numel())
    if n == 0:
        return hidden.sum() * 0.0, 0
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        hs, ys = h[s:s + chunk], y[s:s + chunk]
        if torch.is_grad_enabled() and n > chunk:
            total = total + checkpoint(_chunk_ce_sum, model, hs, ys, use_reentrant=False)
        else:
            total = total + _chunk_ce_sum(model, hs, ys)
    return total, n


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
