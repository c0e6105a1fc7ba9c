"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), greedy form.

A small draft model proposes `k` tokens one at a time; the target scores all of them in ONE forward
pass over k+1 positions and keeps the longest prefix it agrees with, plus its own next token:

    draft:   d1 d2 d3 d4            (k = 4 cheap steps)
    target:  t1 t2 t3 t4 t5         (one pass over [last, d1, d2, d3, d4])
    accept d1..dj while dj == tj, then emit t(j+1)  ->  j + 1 tokens per target pass

Every emitted token is the target's own argmax given the tokens before it, so the output is exactly
the target's greedy output; the draft only changes how many target passes it takes. Both models keep
static KV caches; rejected slots are simply overwritten later (masks never look past the current
position), so "rolling back" is moving the position back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmzoo.errors import ContextLengthError, GenerationError
from lmzoo.runtime.cache import KVCache


@dataclass
class SpeculativeStats:
    target_passes: int = 0
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0
    per_pass: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.emitted / self.target_passes if self.target_passes else 0.0


@torch.inference_mode()
def speculative_generate(
    target,
    draft,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 128,
    k: int = 4,
    eos_token_id=None,
    stats: SpeculativeStats | None = None,
) -> torch.Tensor:
    """Greedy speculative decoding for one sequence; returns the new ids (1, <= max_new_tokens),
    identical to `lmzoo.generate(target, input_ids, max_new_tokens=...)`."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise GenerationError(
            f"draft vocabulary ({draft.config.vocab_size}) differs from the target's "
            f"({target.config.vocab_size}); the draft must share the target's tokenizer"
        )
    if not isinstance(k, int) or k < 1:
        raise GenerationError(f"k (tokens drafted per step) must be a positive integer, got {k!r}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise GenerationError(f"speculative decoding runs one sequence at a time, got batch {input_ids.shape[0]}")
    T0 = input_ids.shape[1]
    ctx = min(target.config.max_seq_len, draft.config.max_seq_len)
    if T0 > ctx:
        raise ContextLengthError(f"prompt of {T0} tokens is longer than the context of {ctx} tokens")
    max_new_tokens = min(max_new_tokens, ctx - T0)
    refill = target.config.rope_scaling.refill_at if target.config.position == "rope" else None
    if refill is not None and T0 <= refill < T0 + max_new_tokens:
        raise GenerationError(
            f"speculative decoding cannot cross the LongRoPE switch at {refill} tokens (the target must "
            "re-encode its cache there); use lmzoo.generate for this length"
        )
    if max_new_tokens <= 0:
        return input_ids.new_zeros((1, 0))
    eos = set(target.config.eos_token_id if eos_token_id is None else
              ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id))
    stats = stats if stats is not None else SpeculativeStats()
    # k extra slots: a verification pass may write k positions past the last kept token
    cache_len = min(T0 + max_new_tokens + k + 1, ctx)
    # one cache each (also when target and draft are the same model object)
    target_cache, draft_cache = KVCache(target, 1, cache_len), KVCache(draft, 1, cache_len)

    def at(model, cache, ids, start, **kw):
        """model on ids written from slot `start` of its cache (dropping anything beyond it)."""
        cache.rewind(0, start)
        return model(ids, cache=cache, **kw)


    # prefill both; the target's first token is free
    nxt = at(target, target_cache, input_ids, 0, last_only=True)[:, -1].argmax(-1)
    at(draft, draft_cache, input_ids, 0, last_only=True)
    out = [int(nxt)]
    stats.target_passes += 1
    stats.emitted += 1
    pos = T0  # slot of `nxt`, not yet in either cache
    draft_pos = T0  # first draft slot not holding a kept token
    while len(out) < max_new_tokens and out[-1] not in eos:
        n_draft = min(k, max_new_tokens - len(out), cache_len - pos - 1)
        if n_draft < 1:
            break
        # 1) draft proposes n_draft tokens; first catch its cache up on tokens it has not seen
        catch_up = torch.tensor([out[len(out) - 1 - (pos - draft_pos):]], device=input_ids.device)
        logits = at(draft, draft_cache, catch_up, draft_pos, last_only=True)[:, -1]
        proposal = []
        for i in range(n_draft):
            d = int(logits.argmax(-1))
            proposal.append(d)
            if i + 1 < n_draft:
                logits = at(draft, draft_cache, torch.tensor([[d]], device=input_ids.device), pos + 1 + i)[:, -1]
        # 2) target scores [nxt, d1..dn] in one pass: logits at slot pos+i predict slot pos+i+1
        block = torch.tensor([[out[-1]] + proposal], device=input_ids.device)
        verdict = at(target, target_cache, block, pos).argmax(-1)[0].tolist()  # n_draft + 1 tokens
        stats.target_passes += 1
        stats.drafted += n_draft
        j = 0
        while j < n_draft and proposal[j] == verdict[j]:
            j += 1
        stats.accepted += j
        emitted = proposal[:j] + [verdict[j]]
        stats.per_pass.append(len(emitted))
        for t in emitted:
            if len(out) < max_new_tokens and (not out or out[-1] not in eos):
                out.append(t)
                stats.emitted += 1
        # kept tokens now fill slots < pos + j + 1 in the target. The draft wrote nxt, d1..d(n-1), so
        # it also holds every kept token unless all n were accepted: then dn (slot pos + n) was never
        # fed to it and goes into the next catch-up block.
        pos += j + 1
        draft_pos = pos - 1 if j == n_draft else pos
    return torch.tensor([out[:max_new_tokens]], device=input_ids.device)

