"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition / presence /
frequency penalties, per request with its own seed.

Order (HF's, and what vLLM applies): penalties on the raw logits, then temperature, then top-k, then
top-p; removed tokens get -inf; sampling draws from the softmax of what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmzoo.errors import GenerationError
from lmzoo.quant.kernels import cpu_kernels


@dataclass(kw_only=True)
class SamplingParams:
    temperature: float = 0.0  # 0 -> greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # CTRL's rule over prompt + output (HF)
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the output
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise GenerationError(f"{name} must be in [-2, 2], got {getattr(self, name)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as HF applies it: seen tokens' positive logits are
    divided by `penalty`, negative ones multiplied. `seen` (B, S) holds prompt + generated ids."""
    score = logits.gather(1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(1, seen, score)


def apply_penalties(logits: torch.Tensor, p: SamplingParams, prompt: list[int], output: list[int]) -> torch.Tensor:
    """logits (1, vocab) of one request -> penalised logits."""
    if p.repetition_penalty != 1.0:
        seen = torch.tensor([prompt + output], dtype=torch.long, device=logits.device)
        logits = apply_repetition_penalty(logits, seen, p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and output:
        counts = torch.bincount(torch.tensor(output, device=logits.device), minlength=logits.shape[-1])
        counts = counts[: logits.shape[-1]].to(logits.dtype)[None]
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


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


def sample_next(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, vocab) float32 -> next ids (B,)."""
    k = cpu_kernels() if p.greedy and logits.device.type == "cpu" and logits.dtype == torch.float32 else None
    if k is not None:  # argmax and the NaN check in one pass (torch's argmax alone takes ~0.1 ms a row)
        ids, nan = k.greedy_ids(logits.contiguous())
        if not nan:
            return ids
    if torch.isnan(logits).any():  # argmax / multinomial would pick a token anyway, silently
        raise GenerationError("the model's logits are NaN: its weights hold non-finite values or a float16 "
                              "computation overflowed; expected finite weights (float16 models: try float32)")
    if p.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
