"""`lmzoo.generate` / `lmzoo.stream_generate`: batch generation from token ids, a thin layer over
the engine (runtime.engine).

    ids (B, T0) [+ attention_mask (B, T0), 0 = left padding]
      -> one engine request per row (padding stripped), all submitted at once
      -> (B,) next ids per step; a row that has stopped yields pad_token_id

Each row computes exactly what it would alone. A row stops at an id in `eos_token_id` (default:
the config's), when its decoded output contains a `stop` string (needs `tokenizer`) or after
`max_new_tokens`. Seeds: row b samples with its own generator seeded `seed + b`, so row 0 of a batch
equals the same prompt generated alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from lmzoo.errors import ContextLengthError, GenerationError
from lmzoo.runtime.engine import Engine, Request
from lmzoo.runtime.sampling import SamplingParams


def stream_generate(
    model,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    attention_mask: torch.Tensor | None = None,
    stop: Sequence[str] | None = None,
    tokenizer=None,
    decode: str = "eager",
    kv_dtype=None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until every row has stopped or `max_new_tokens`.
    decode: "eager" (default), "static" (fixed-shape steps) or "compiled" (those steps under
    torch.compile; CUDA graphs on GPU). Same tokens; the choice is about speed. kv_dtype: the KV
    cache's dtype (default: the activations'; "float16" halves it, see lmzoo.Engine)."""
    SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if stop and tokenizer is None:
        raise GenerationError("stop strings need a tokenizer to decode the output")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise GenerationError(f"input_ids must be (batch, seq) with seq >= 1, got shape {tuple(input_ids.shape)}")
    cfg = model.config
    from lmzoo.nn.transformer import check_inputs

    check_inputs(input_ids, attention_mask, cfg.vocab_size)
    B, T0 = input_ids.shape
    if T0 > cfg.max_seq_len:
        raise ContextLengthError(f"prompt of {T0} tokens is longer than the model's context of {cfg.max_seq_len} tokens")
    max_new_tokens = min(max_new_tokens, cfg.max_seq_len - T0)
    if max_new_tokens == 0:
        return
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    rows = input_ids.tolist()
    if attention_mask is not None:
        rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
    engine = Engine(model, tokenizer, max_running=B, max_len=T0 + max_new_tokens, decode=decode,
                    step_tokens=max(512, B + 256), kv_dtype=kv_dtype)
    ids = []
    for b, r in enumerate(rows):
        ids.append(engine.submit(Request(
            prompt=r, max_tokens=max_new_tokens, stop=tuple(stop or ()), stop_token_ids=eos,
            sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                    repetition_penalty=repetition_penalty,
                                    seed=None if seed is None else seed + b))))
    row_of = {rid: b for b, rid in enumerate(ids)}
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    yielded = 0
    device = input_ids.device
    while engine.has_work:
        for ev in engine.step():
            b = row_of[ev.request_id]
            if ev.token is not None:
                out[b].append(ev.token)
            done[b] = done[b] or ev.finish_reason is not None
        # release every step that all rows have reached (or stopped before)
        while all(d or len(o) > yielded for o, d in zip(out, done)) and any(len(o) > yielded for o in out):
            yield torch.tensor([o[yielded] if len(o) > yielded else pad_token_id for o in out], device=device)
            yielded += 1


def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int = 128, **kwargs) -> torch.Tensor:
    """Generated ids (B, <= max_new_tokens), without the prompt. See `stream_generate`."""
    steps = list(stream_generate(model, input_ids, max_new_tokens=max_new_tokens, **kwargs))
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if not steps:
        return input_ids.new_zeros((input_ids.shape[0], 0))
    return torch.stack(steps, dim=1)
