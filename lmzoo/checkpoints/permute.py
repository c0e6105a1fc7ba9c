"""The one row permutation checkpoint conversion needs, with its inverse.

RoPE comes in two layouts. lmzoo (like HF LLaMA) rotates *halves*: dims (i, i + r/2) of a head form
a pair. GPT-J, DeepSeek's released weights and llama.cpp's GGUF files rotate *adjacent pairs*:
dims (2i, 2i + 1). Reordering the rows of W_q and W_k the same way leaves every q.k product
unchanged, so converting a checkpoint is a row permutation within each head:

    pairs:   a0 b0 a1 b1 a2 b2 ...      (rows of one head's rope part, r of them)
    halves:  a0 a1 a2 ... b0 b1 b2 ...

`pairs_to_halves` applies it to every head's window [offset, offset + r) of `rows_per_head` rows;
`inverse=True` undoes it (halves -> pairs, what writing GGUF or GPT-J layout needs).
"""

from __future__ import annotations

import torch


def pair_order(rows_per_head: int, offset: int, r: int) -> torch.Tensor:
    """Source row for each destination row of one head (pairs -> halves)."""
    if r % 2 or offset + r > rows_per_head:
        raise ValueError(f"rope window [{offset}, {offset + r}) must be even-sized and fit {rows_per_head} rows")
    order = torch.arange(rows_per_head)
    order[offset:offset + r] = offset + torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])
    return order


def pairs_to_halves(t: torch.Tensor, *, heads: int, rope_dim: int | None = None, offset: int = 0,
                    inverse: bool = False) -> torch.Tensor:
    """t (heads * rows_per_head, ...) -> the same rows with each head's rope window reordered."""
    rows = t.shape[0] // heads
    order = pair_order(rows, offset, rows if rope_dim is None else rope_dim)
    if inverse:
        order = torch.argsort(order)
    return t.reshape(heads, rows, *t.shape[1:])[:, order].reshape(t.shape)
