"""A fixed-shape decode step, for torch.compile and CUDA graphs (the gpt-fast recipe).

`Transformer.forward(ids, start=s)` slices the KV cache to [0, s+1) and builds a mask of that length,
so every step has new shapes: fine eagerly, but a compiled graph would be re-traced every token and
CUDA graphs cannot be captured at all. Here one step always has the same shapes:

    token (B, 1)  slot: 0-dim long tensor  positions (B, 1)  key_valid (B, L_cache) bool
      -> k/v written at `slot` with index_copy_ (no slicing)
      -> attention over the whole cache, mask = key_valid & (cache slot <= slot) [& sliding window]
      -> logits (B, vocab)

`StaticDecoder(model, compile=...)` wraps it; `lmzoo.generate(..., decode="static" | "compiled")`
uses it. A compiled step is specialised to the cache's length: the model keeps its cache between
calls and reuses it when it is long enough, so only a generation that needs a *longer* cache
recompiles (warm up with the longest prompt + max_new_tokens you will use).
Prefill stays the ordinary forward (its length varies; SDPA/FlashAttention handle it).
Architectures whose decode depends on data the graph cannot hold fixed (ALiBi bias tables,
chunked attention, prefix-LM/2-D positions, MLA's latent cache, RoPE rules recomputed from the
length) are refused with a clear error and keep the eager path.
"""

from __future__ import annotations

import torch

from lmzoo.errors import ConfigError


def unsupported(cfg) -> str | None:
    """Why a fixed-shape step cannot serve this config (None when it can)."""
    if cfg.position in ("alibi", "rope_2d"):
        return f"position={cfg.position!r}"
    if cfg.attention_chunk is not None:
        return "chunked attention"
    if cfg.prefix_lm:
        return "a prefix-LM mask"
    if cfg.attention == "mla" and cfg.mla_cache == "latent":
        return "MLA's latent cache"
    if cfg.rope_scaling.kind in ("dynamic", "longrope", "ntk_alpha"):
        return f"rope_scaling={cfg.rope_scaling.kind!r} (recomputed from the sequence length)"
    if cfg.attn_temperature_floor:
        return "NoPE-layer attention temperature"
    return None


@torch.no_grad()
def decode_step(model, token: torch.Tensor, slot: torch.Tensor, positions: torch.Tensor,
                key_valid: torch.Tensor) -> torch.Tensor:
    """One token per row through `model` with fixed shapes; returns logits (B, vocab) in float32."""
    cfg = model.config
    L = model.cache_len
    x = model.embed_tokens(token, positions)
    cos = sin = None
    if model.rope is not None:
        cos, sin = model.rope(positions, x.dtype)
    q_scale = model.logn_scale(positions)
    k_slot = torch.arange(L, device=token.device)
    visible = key_valid & (k_slot <= slot)  # (B, L)
    masks = {}
    for w, _ in model.patterns:
        m = visible if w is None else visible & (k_slot > slot - w)
        masks[w] = m[:, None, None, :]  # (B, 1, 1, L)
    last = len(model.layers) - 1
    for i, layer in enumerate(model.layers):
        query = model.query_embed(positions) if cfg.query_layer and i == last else None
        if query is not None:
            x = model.norm(x)
        x = layer(x, cos, sin, masks[layer.attn.window], slot, q_scale, query)
    return model.logits(x)[:, -1].float()


class StaticDecoder:
    """`decoder(token, slot, positions, key_valid)` -> logits (B, vocab), optionally compiled.

    compile: False (eager, fixed shapes), True (torch.compile; on CUDA mode="reduce-overhead", i.e.
    CUDA graphs), or a torch.compile mode string."""

    def __init__(self, model, *, compile: bool | str = False) -> None:
        why = unsupported(model.config)
        if why:
            raise ConfigError(f"fixed-shape (static/compiled) decoding does not support {why}; use decode='eager'")
        self.model = model
        fn = lambda *a: decode_step(model, *a)  # noqa: E731
        if compile:
            mode = compile if isinstance(compile, str) else (
                "reduce-overhead" if model.embed.weight.device.type == "cuda" else None)
            # graph breaks allowed: lmzoo's CPU GEMV kernel and the MoE expert loop (data-dependent)
            # stay eager; on CUDA a dense model compiles to one graph
            fn = torch.compile(fn, mode=mode, dynamic=False)
        self.fn = fn

    def __call__(self, token, slot, positions, key_valid) -> torch.Tensor:
        return self.fn(token, slot, positions, key_valid)
