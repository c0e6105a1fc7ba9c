"""Fixed-shape decode steps for torch.compile and CUDA graphs (the gpt-fast recipe), through the
model's one forward.

An eager step slices the cache to the longest row and builds a mask of that length, so its shapes
change every token: fine eagerly, but a compiled graph would be re-traced per token and CUDA graphs
could not be captured. With a static cache (KVCache(..., static=True)) the same forward keeps every
shape fixed:

    ids (B, 1) -> k/v written at each row's slot (index_put)  -> attention over all L cache slots,
    unwritten ones masked                                      -> logits (B, vocab)

A compiled step is specialised to the cache's batch and length: create one engine (one cache) and
reuse it. Prefill stays eager (its length varies).
"""

from __future__ import annotations

import weakref

import torch

from lmzoo.errors import ConfigError

_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def unsupported(cfg) -> str | None:
    """Why a fixed-shape step cannot serve this config (None when it can)."""
    if cfg.prefix_lm:
        return "a prefix-LM mask (its context is recorded at an eager prefill)"
    if cfg.rope_scaling.kind in ("dynamic", "longrope", "ntk_alpha"):
        return f"rope_scaling={cfg.rope_scaling.kind!r} (recomputed from the sequence length)"
    return None


def decode_step(model, *, compile: bool | str = False):
    """fn(ids (B, 1), cache) -> logits (B, vocab) float32, for a static cache.

    compile: False (eager, fixed shapes), True (torch.compile; on CUDA mode="reduce-overhead", i.e.
    CUDA graphs), or a torch.compile mode string. Compiled functions are kept per model (compiling
    is the expensive part)."""
    why = unsupported(model.config)
    if why:
        raise ConfigError(f"fixed-shape (static/compiled) decoding does not support {why}; use decode='eager'")

    def step(ids, cache):
        return model(ids, cache=cache)[:, -1].float()

    if not compile:
        return step
    per_model = _COMPILED.setdefault(model, {})
    if compile not in per_model:
        mode = compile if isinstance(compile, str) else (
            "reduce-overhead" if model.token_dtype_device()[1].type == "cuda" else None)
        per_model[compile] = torch.compile(step, mode=mode, dynamic=False)
    return per_model[compile]
