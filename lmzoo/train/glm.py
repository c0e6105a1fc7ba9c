"""GLM's autoregressive blank infilling (Du et al. 2022, "GLM: General Language Model Pretraining
with Autoregressive Blank Infilling"), as the seeds describe it:

    x = [x1 x2 x3 x4 x5 x6], spans [x3] and [x5 x6] blanked
    Part A (the corrupted text):   x1 x2 [M] x4 [M]
    Part B (the spans, shuffled):  [S] x5 x6   [S] x3        inputs
                                   x5  x6 [E]  x3  [E]       targets
    position 1 (where in A):       1 2 3 4 5 | 5 5 5 | 3 3   a span's tokens sit at its [M]'s position
    position 2 (inside the span):  0 0 0 0 0 | 1 2 3 | 1 2
    attention: Part A sees all of Part A (bidirectional) and nothing of B; a Part B token sees Part A
    and the Part B tokens before it (causal).

Positions are 1-based here as in the paper's figure and the seeds; pass `first_position=0` for the
0-based ids the released models use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class BlankInfilling:
    input_ids: list          # Part A then Part B inputs
    targets: list            # None for Part A (no loss), the next Part B token otherwise
    position_ids: torch.Tensor   # (2, L): position 1, position 2
    attention_mask: torch.Tensor  # (L, L) bool, True = may attend
    part_a_len: int


def blank_infilling(tokens: list, spans: list[tuple[int, int]], *, mask="[M]", start="[S]", end="[E]",
                    order: list[int] | None = None, seed: int | None = None,
                    first_position: int = 1) -> BlankInfilling:
    """Build GLM's input for `tokens` with `spans` (0-based, half-open, non-overlapping) blanked.

    order: Part B's span order (indices into `spans`, sorted by start); None shuffles with `seed`.
    """
    spans = sorted(spans)
    for (_s0, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ValueError(f"spans {spans} overlap")
    if any(not 0 <= s < e <= len(tokens) for s, e in spans):
        raise ValueError(f"spans {spans} must be non-empty and inside the {len(tokens)} tokens")
    part_a, mask_pos, prev = [], [], 0
    for s, e in spans:
        part_a += tokens[prev:s]
        mask_pos.append(len(part_a) + first_position)
        part_a.append(mask)
        prev = e
    part_a += tokens[prev:]
    if order is None:
        order = list(range(len(spans)))
        random.Random(seed).shuffle(order)
    if sorted(order) != list(range(len(spans))):
        raise ValueError(f"order {order} is not a permutation of {len(spans)} spans")
    inputs, targets = list(part_a), [None] * len(part_a)
    pos1 = list(range(first_position, first_position + len(part_a)))
    pos2 = [0] * len(part_a)
    for j in order:
        s, e = spans[j]
        span = tokens[s:e]
        inputs += [start] + span
        targets += span + [end]
        pos1 += [mask_pos[j]] * (len(span) + 1)
        pos2 += list(range(1, len(span) + 2))
    L, A = len(inputs), len(part_a)
    allowed = torch.zeros(L, L, dtype=torch.bool)
    allowed[:, :A] = True  # everyone sees Part A; Part A sees nothing else
    allowed[A:, A:] = torch.ones(L - A, L - A, dtype=torch.bool).tril()  # Part B: causal
    return BlankInfilling(inputs, targets, torch.tensor([pos1, pos2]), allowed, A)
