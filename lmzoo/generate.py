"""Autoregressive generation over the static KV cache: greedy, temperature, top-k, top-p,
repetition penalty, seeds, EOS and stop strings, streaming.

    prefill:  model(prompt (B, T0), start=0)            fills cache slots [0, T0)
    decode:   model(last token (B, 1), start=T0 + i)    one slot per step

Rows of different lengths are left-padded; `attention_mask` (B, T0) marks real tokens, and each
row's positions count from its first real token, so a padded row computes what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from lmzoo.errors import ContextLengthError, GenerationError


@dataclass(kw_only=True)
class SamplingParams:
    temperature: float = 0.0  # 0 -> greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature is None or not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise GenerationError(f"top_k must be a positive integer or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise GenerationError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as HF applies it: seen tokens' positive logits are
    divided by `penalty`, negative ones multiplied. `seen` (B, S) holds prompt + generated ids."""
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (HF's order); removed tokens get -inf."""
    logits = logits / p.temperature
    if p.top_k is not None and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p is not None and p.top_p < 1:
        sorted_logits, idx = logits.sort(dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - p.top_p  # drop the low tail whose mass is <= 1 - top_p
        remove[:, -1] = False  # always keep the most likely token
        logits = logits.masked_fill(remove.scatter(1, idx, remove), float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, vocab) float32 -> next ids (B,)."""
    if p.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
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
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), until every row has stopped or `max_new_tokens`.

    A row stops at an id in `eos_token_id` (default: the config's) or when its decoded output ends
    with one of the `stop` strings (needs `tokenizer`). Stopped rows yield `pad_token_id`.
    decode: "eager" (default), "static" (fixed-shape steps, lmzoo.static_decode) or "compiled" (those
    steps under torch.compile; CUDA graphs on GPU). Same tokens; the choice is about speed.
    """
    if decode not in ("eager", "static", "compiled"):
        raise GenerationError(f"decode must be 'eager', 'static' or 'compiled', got {decode!r}")
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty, seed=seed,
    )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if stop and tokenizer is None:
        raise GenerationError("stop strings need a tokenizer to decode the output")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise GenerationError(f"input_ids must be (batch, seq) with seq >= 1, got shape {tuple(input_ids.shape)}")
    cfg = model.config
    B, T0 = input_ids.shape
    if T0 > cfg.max_seq_len:
        raise ContextLengthError(
            f"prompt of {T0} tokens is longer than the model's context of {cfg.max_seq_len} tokens"
        )
    if input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size:
        raise GenerationError(f"input_ids must lie in [0, {cfg.vocab_size}); got values outside")
    max_new_tokens = min(max_new_tokens, cfg.max_seq_len - T0)
    if max_new_tokens == 0:
        return
    if eos_token_id is None:
        eos_token_id = cfg.eos_token_id
    eos = torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
        dtype=torch.long, device=input_ids.device,
    )
    if pad_token_id is None:
        pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(params.seed)

    mask = None
    if attention_mask is not None and not bool(attention_mask.all()):
        mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
    model.setup_cache(B, T0 + max_new_tokens)
    static = None
    if decode != "eager":
        static = _static_decoder(model, compile=decode == "compiled")
        L = model.cache_len
        key_valid = torch.ones(B, L, dtype=torch.bool, device=input_ids.device)
        if mask is not None:
            key_valid[:, :T0] = mask.bool()
        row_pos = (mask.sum(-1, keepdim=True) if mask is not None else torch.full((B, 1), T0, device=input_ids.device))
    refill_at = cfg.rope_scaling.refill_at if cfg.position == "rope" else None
    seen = input_ids
    done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    out_ids: list[list[int]] = [[] for _ in range(B)]
    logits = model(input_ids, start=0, attention_mask=mask, last_only=True)[:, -1].float()
    pos = T0
    for step in range(max_new_tokens):
        if params.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
        nxt = sample_next(logits, params, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        yield nxt
        done = done | torch.isin(nxt, eos)
        if stop:
            for b in range(B):
                if not done[b]:
                    out_ids[b].append(int(nxt[b]))
                    # decode the whole row: single tokens may be partial UTF-8 characters
                    text = tokenizer.decode(out_ids[b])
                    if any(s in text for s in stop):
                        done[b] = True
        if bool(done.all()) or step == max_new_tokens - 1:
            return
        seen = torch.cat([seen, nxt[:, None]], dim=1)
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if pos == refill_at and T0 <= refill_at:  # re-encode everything (see RopeScaling.refill_at)
            logits = model(seen, start=0, attention_mask=mask, last_only=True)[:, -1].float()
        elif static is not None:
            slot = torch.tensor(pos, device=input_ids.device)
            logits = static(nxt[:, None], slot, row_pos + (pos - T0), key_valid)
        else:
            logits = model(nxt[:, None], start=pos, attention_mask=mask)[:, -1].float()
        pos += 1


def _static_decoder(model, *, compile: bool):
    """One StaticDecoder per model and mode, kept on the model: compiling is the expensive part."""
    from lmzoo.static_decode import StaticDecoder

    cache = model.__dict__.setdefault("_static_decoders", {})
    if compile not in cache:
        cache[compile] = StaticDecoder(model, compile=compile)
    return cache[compile]


def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int = 128, **kwargs) -> torch.Tensor:
    """Generated ids (B, <= max_new_tokens), without the prompt. See `stream_generate`."""
    steps = list(stream_generate(model, input_ids, max_new_tokens=max_new_tokens, **kwargs))
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if not steps:
        return input_ids.new_zeros((input_ids.shape[0], 0))
    return torch.stack(steps, dim=1)
