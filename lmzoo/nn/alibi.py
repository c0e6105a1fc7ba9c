"""ALiBi (Press et al. 2021, "Train Short, Test Long"): no position embeddings; each head h adds
slope_h * (key position) to its attention scores. Since softmax ignores a per-query constant, this is
the paper's  -slope_h * (query - key)  distance penalty, as BLOOM implements it.

Slopes are a geometric sequence starting at 2^(-8/n). For head counts that are not powers of two,
the paper takes the n' = 2^floor(log2 n) slopes and then every other slope of the 2n' sequence:

    n = 6:  2^-1, 2^-2, 2^-3, 2^-4 (n' = 4)  +  2^-0.5, 2^-1.5 (odd terms of the 8-head sequence)
"""

from __future__ import annotations

import math

import torch

from lmzoo.dtypes import DTYPES


def alibi_slopes(n_head: int, device=None) -> torch.Tensor:
    def geometric(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
        return [start ** (i + 1) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(p)
    if p != n_head:
        slopes += geometric(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32, device=device)


# ModelConfig.alibi_dtype -> the precision slope x position is evaluated in



def alibi_bias(slopes: torch.Tensor, key_positions: torch.Tensor, *, dtype: str = "float32",
               scale: float = 1.0) -> torch.Tensor:
    """(n_head,) slopes, (B, L) key positions -> additive fp32 score bias (B, n_head, 1, L).

    dtype="bfloat16" rounds the slopes, the positions and their product to bfloat16 as Falcon-RW's
    code does (exact positions only up to 256); `scale` multiplies the result (Falcon-RW adds the
    bias before the 1/sqrt(hd) softmax scale, so its bias is scaled with q.k)."""
    t = DTYPES[dtype]
    bias = (slopes.to(t)[None, :, None] * key_positions[:, None, :].to(t)).float()
    return (bias * scale if scale != 1.0 else bias)[:, :, None, :]
