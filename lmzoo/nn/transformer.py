"""The one decoder-only Transformer every family is a configuration of.

    input_ids (B, T)
      -> embed [+ learned positions]             (B, T, d)
      -> n_layer x block (nn.block: pre / post / deepnorm / sandwich / parallel residual layouts)
      -> norm -> lm_head                         (B, T, vocab)

`forward(ids)` is a plain causal pass; `attention_mask` (B, T) marks real tokens (0 = left padding).
`forward(ids, positions=p, allowed=m)` takes the layout from the caller instead: explicit positions
((B, T), or (B, 2, T) for GLM's 2-D positions) and which key each query may see, m (B, T, T) bool —
what GLM's blank-infilling training rows need (lmzoo.train.glm: Part A bidirectional, Part B causal).
`forward(ids, cache=c)` continues the rows of a caller-owned cache (lmzoo.runtime.KVCache): each row
writes its new keys/values after its own last slot and attends to everything it wrote. The model
holds no request state; the same forward serves eager decoding and fixed-shape compiled steps
(a cache made with static=True).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import ContextLengthError, GenerationError, InputError
from lmzoo.nn.alibi import alibi_bias, alibi_slopes
from lmzoo.nn.attention import AttnInputs, build_mask
from lmzoo.nn.block import QueryLayer, build_block
from lmzoo.nn.norm import build_norm
from lmzoo.nn.rope import RotaryEmbedding


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        e = cfg.embed_dim or cfg.n_embd
        self.embed = nn.Embedding(cfg.vocab_size, e)
        # narrower token embeddings than the residual stream (OPT-350m): project in and back out
        self.project_in = nn.Linear(e, cfg.n_embd, bias=False) if e != cfg.n_embd else None
        self.project_out = nn.Linear(cfg.n_embd, e, bias=False) if e != cfg.n_embd else None
        self.embed_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps) if cfg.embed_norm else None
        if cfg.position == "learned":  # absolute position table (GPT-2, OPT)
            self.pos_embed = nn.Embedding(cfg.max_seq_len + cfg.position_offset, cfg.n_embd)
        if cfg.query_layer:  # PanGu-alpha: the top layer's queries, one per position
            self.query_embed = nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.layers = nn.ModuleList(build_block(cfg, i) for i in range(cfg.n_layer))
        self.norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps) if cfg.final_norm else None
        self.lm_head = nn.Linear(e, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(cfg) if cfg.position in ("rope", "rope_2d") else None
        if cfg.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        # distinct (window, chunk) attention patterns; one mask is built per pattern per forward
        self.patterns = sorted({(cfg.layer_window(i), cfg.layer_chunk(i)) for i in range(cfg.n_layer)}, key=str)
        # decode_layers(model, x, a, masks) -> (B, 1, d) or None: a one-token step through every layer
        # at once, installed by a kernel transform (lmzoo.quant.gemv); None = not applicable to this
        # call, the layers run one by one
        self.decode_layers = None

    def token_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        """The dtype and device of the token embeddings, i.e. of the activations (a float table's, or
        a table kept quantised (lmzoo.quant.layers.QuantEmbedding): the dtype it dequantises to)."""
        e = self.embed
        w = e._parameters.get("weight") if isinstance(e, nn.Embedding) else None
        return (w.dtype, w.device) if w is not None else (e.dtype, e.device)

    def reset_buffers(self, device=None) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies, ALiBi slopes), e.g. after a
        meta-device build."""
        if self.rope is not None:
            self.rope.reset_buffers(device=device)
        if self.config.position == "alibi":
            self.alibi_slopes = alibi_slopes(self.config.n_head, device=device)

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        cache=None,
        rows=None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        allowed: torch.Tensor | None = None,
        last_only: bool = False,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); with last_only, (B, 1, vocab) for the last position only (what
        generation needs: the head is the largest matrix, so a prefill skips T-1 rows of it).

        cache: a lmzoo.runtime.KVCache owned by the caller; rows selects which of its rows these B
        inputs continue (None: all, in order). attention_mask (B, T): 0 marks left padding in this
        call's tokens. positions (B, T) (or (B, 2, T), GLM) overrides the positions counted from
        each row's real tokens. segment_ids (B, T), no cache: packed training rows — a token attends
        only to earlier tokens of its own segment, and positions restart at 0 in each segment.
        allowed (B, T, T) bool, no cache: query t may attend key s where allowed[b, t, s] (e.g. GLM's
        blank infilling, lmzoo.train.glm); it replaces the causal / prefix-LM / padding mask, and the
        positions are the caller's (`positions`, required for rope_2d) or 0..T-1.
        hidden_only: return the last hidden states (B, T, d) instead of logits (a chunked loss applies
        the head itself, `logits`)."""
        cfg = self.config
        if not torch.compiler.is_compiling():
            check_inputs(input_ids, attention_mask, cfg.vocab_size)
        B, T = input_ids.shape
        dev = input_ids.device
        if allowed is not None:
            check_allowed(allowed, B, T, cfg, cache=cache, attention_mask=attention_mask,
                          segment_ids=segment_ids, positions=positions, patterns=self.patterns)
        if cache is None:
            if T > cfg.max_seq_len:
                raise ContextLengthError(f"sequence of {T} tokens exceeds the model's context of {cfg.max_seq_len}")
            real = attention_mask.bool() if attention_mask is not None else None
            q_slot = torch.arange(T, device=dev)[None]  # (1, T)
            pos = (real.long().cumsum(-1) - 1).clamp(min=0) if real is not None else q_slot.expand(B, T)
            if segment_ids is not None:
                if cfg.prefix_lm:
                    raise GenerationError("packed segments are not supported for prefix-LM models (GLM)")
                pos = segment_positions(segment_ids)
            key_valid, key_pos, L, step = real, pos, T, None
            dense_prefill = real is None and segment_ids is None  # slot 0, no padding, one segment: causal
            dense_decode = T == 1
            # an explicit `allowed` mask carries the prefix-LM layout itself (no <sop> search)
            prefix = prefix_lm_state(input_ids, attention_mask, cfg) if cfg.prefix_lm and allowed is None else None
            ntk_len = (real.sum(-1) if real is not None else torch.full((B,), T, device=dev)) \
                if cfg.rope_scaling.kind == "ntk_alpha" else None
        else:
            step = cache.begin(rows, T, attention_mask)
            q_slot, pos, key_valid, key_pos, L = step.q_slot, step.positions, step.key_valid, step.key_pos, step.end
            dense_prefill = step.first is True and attention_mask is None
            dense_decode = step.dense and T == 1
            prefix = ntk_len = None
            if cfg.prefix_lm:  # each row's context and [gMASK], found at its prefill, kept in the cache
                if step.first:
                    found = prefix_lm_state(input_ids, attention_mask, cfg)
                    for t, f in zip((cache.prefix_first, cache.prefix_sop, cache.prefix_mask), found):
                        t[step.idx] = f
                else:
                    step.check_not_mixed("a prefix-LM model")
                prefix = (cache.prefix_first[step.idx], cache.prefix_sop[step.idx], cache.prefix_mask[step.idx])
            if cfg.rope_scaling.kind == "ntk_alpha":  # alpha fixed at each row's prefill (Qwen v1)
                if step.first:
                    cache.ntk_len[step.idx] = attention_mask.sum(-1) if attention_mask is not None else T
                else:
                    step.check_not_mixed("NTK-alpha RoPE")
                ntk_len = cache.ntk_len[step.idx]
        prefix_end = None
        if prefix is not None:
            first, prefix_end, mask_pos = prefix
            if positions is None and cfg.position == "rope_2d":
                positions = glm_positions(first, prefix_end, mask_pos, q_slot.expand(B, T))
        if positions is None:
            positions = pos

        x = self.embed_tokens(input_ids, positions)
        a = AttnInputs(q_scale=self.logn_scale(positions), q_slot=q_slot, kv=step)
        bias = None
        if self.rope is not None:
            a.cos, a.sin = self.rope(positions, x.dtype, ntk_len)
        elif cfg.position == "alibi":
            # key positions of every visible slot, counted from each row's first real token
            scale = (cfg.attn_scale or cfg.head_dim ** -0.5) if cfg.alibi_scaled else 1.0
            bias = alibi_bias(self.alibi_slopes, key_pos, dtype=cfg.alibi_dtype, scale=scale)  # (B, n_head, 1, L)
        masks = {}
        for w, c in self.patterns:
            if allowed is not None:  # the caller's mask: (B, T, T) -> (B, 1, T, T), shared by the heads
                m = allowed[:, None]
                masks[w, c] = m if bias is None else bias.to(x.dtype).masked_fill(~m, float("-inf"))
                continue
            if w is None and c is None and bias is None and prefix_end is None and (dense_prefill or dense_decode):
                masks[w, c] = None  # plain causal (or one query seeing every key): SDPA's fused path
                continue
            m = build_mask(q_slot=q_slot, L=L, key_valid=key_valid, window=w, chunk=c, q_pos=pos, k_pos=key_pos,
                           prefix_end=prefix_end, segments=segment_ids)
            if bias is not None:  # additive float mask: the bias where allowed, -inf elsewhere
                m = bias.to(x.dtype).masked_fill(~m, float("-inf"))
            masks[w, c] = m
        fused = self.decode_layers(self, x, a, masks) if self.decode_layers is not None and T == 1 else None
        if fused is not None:
            x = fused
        else:
            for layer in self.layers:
                mask = masks[layer.attn.window, layer.attn.chunk]
                if isinstance(layer, QueryLayer):  # PanGu-alpha: final norm, then the query layer
                    x = layer(self.norm(x), a, mask, query=self.query_embed(positions))
                else:
                    x = layer(x, a, mask)
        if last_only:
            x = x[:, -1:]
        return x if hidden_only else self.logits(x)

    # --- pieces ---------------------------------------------------------------------------------
    def embed_tokens(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token (+ learned position) embeddings, (B, T) -> (B, T, d)."""
        x = self.embed(input_ids)
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
        if self.project_in is not None:
            x = self.project_in(x)
        if self.config.position == "learned":
            x = x + self.pos_embed(position_ids + self.config.position_offset)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return x

    def logn_scale(self, position_ids: torch.Tensor) -> torch.Tensor | None:
        """Qwen v1's log-n query scale per position, (B, 1, T, 1), or None when off."""
        n = self.config.logn_attn_base
        if n is None:
            return None
        p1 = position_ids.float() + 1  # (B, T)
        return torch.where(p1 > n, torch.log(p1) / math.log(n), torch.ones_like(p1))[:, None, :, None]

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and projection: the last hidden states as the LM head reads them."""
        if self.norm is not None and not self.config.query_layer:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, projection and LM head: (B, T, d) -> (B, T, vocab)."""
        logits = self.lm_head(self.head_input(x))
        return logits * self.config.logit_scale if self.config.logit_scale != 1.0 else logits


def check_allowed(allowed: torch.Tensor, B: int, T: int, cfg: ModelConfig, *, cache, attention_mask, segment_ids,
                  positions, patterns) -> None:
    """ValueErrors for an explicit attention mask that the forward cannot honour as given."""
    if allowed.dtype != torch.bool or tuple(allowed.shape) != (B, T, T):
        raise ValueError(f"allowed must be a bool (B, T, T) = ({B}, {T}, {T}) tensor, "
                         f"got {allowed.dtype} {tuple(allowed.shape)}")
    given = [n for n, v in (("cache", cache), ("attention_mask", attention_mask), ("segment_ids", segment_ids))
             if v is not None]
    if given:
        raise ValueError(f"allowed= is the whole attention layout; it cannot be combined with {given}")
    if any(p != (None, None) for p in patterns):
        raise ValueError(f"allowed= is not supported with sliding-window / chunked layers (patterns {patterns})")
    if cfg.position == "rope_2d" and (positions is None or positions.dim() != 3):
        raise ValueError("a rope_2d model given allowed= needs its (B, 2, T) positions too (positions=), got "
                         + ("none" if positions is None else f"shape {tuple(positions.shape)}"))
    empty = ~allowed.any(-1)  # (B, T): a query that sees nothing would make a NaN softmax row
    if bool(empty.any()):
        b, t = (int(i) for i in empty.nonzero()[0])
        raise ValueError(f"allowed[{b}, {t}] lets query {t} of row {b} attend to no key; every query needs one "
                         "(let padding attend to itself)")


def check_inputs(input_ids, attention_mask, vocab_size: int) -> None:
    """What a caller hands the model, checked before it reaches an embedding lookup or a mask (where
    a wrong value fails deep inside torch, or silently gives wrong logits). Values are checked on CPU
    (a GPU check would synchronise every step; CUDA's own index assert still fires there)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise InputError(f"input_ids must be a (batch, seq) tensor of token ids, got {shape}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"input_ids must be integer token ids (torch.long), got {input_ids.dtype}")
    cpu = input_ids.device.type == "cpu"
    if cpu and input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise InputError(f"input_ids must lie in [0, {vocab_size}) (the model's vocabulary), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]; do the tokenizer and the model match?")
    if attention_mask is None:
        return
    if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise InputError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)} (1 = real token, "
                         f"0 = padding), got {shape}")
    if cpu:
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise InputError("attention_mask must hold only 0 (padding) and 1 (real token)")
        empty = (~attention_mask.bool().any(-1)).nonzero().flatten().tolist()
        if empty and input_ids.shape[1]:
            raise InputError(f"attention_mask rows {empty} have no real token")


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its segment, (B, T): [a a a b b c] -> [0 1 2 0 1 0]."""
    B, T = segment_ids.shape
    slots = torch.arange(T, device=segment_ids.device).expand(B, T)
    start = torch.ones_like(segment_ids, dtype=torch.bool)
    start[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(start, slots, 0).cummax(dim=-1).values  # slot where each token's segment began
    return slots - first


# --- GLM's prefix-LM inputs (ChatGLM-6B) ---------------------------------------------------------
#
#   tokens     x1 x2 x3 [gMASK] <sop> y1 y2 y3          (ChatGLM's tokenizer appends [gMASK] <sop>)
#   position    0  1  2    3      3    3  3  3          the span sits at the [gMASK] position
#   block       0  0  0    0      1    2  3  4          and counts its own tokens from 1
#   attention  |--- bidirectional --|-- causal ------>  context = everything before <sop>
#
# (THUDM/chatglm-6b modeling_chatglm.py: get_masks, get_position_ids, prepare_inputs_for_generation.)

def prefix_lm_state(ids: torch.Tensor, attention_mask: torch.Tensor | None, cfg: ModelConfig):
    """Per row (B,): slot of the first real token, slot of <sop> (= end of the bidirectional prefix),
    and the [gMASK]/[MASK] position counted from the first real token."""
    valid = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, : ids.shape[1]].bool()
    slots = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    big = ids.shape[1]

    def first_slot(hit: torch.Tensor) -> torch.Tensor:
        return torch.where(hit & valid, slots, big).min(dim=-1).values

    first = first_slot(torch.ones_like(valid))
    sop = first_slot(ids == cfg.bos_token_id)
    mask = torch.full_like(first, big)
    for tok in reversed(cfg.mask_token_ids):  # the first listed token wins where several are present
        found = first_slot(ids == tok)
        mask = torch.where(found < big, found, mask)
    if bool((sop == big).any()) or (cfg.position == "rope_2d" and bool((mask == big).any())):
        raise GenerationError(
            f"prefix-LM input needs the <sop> token (id {cfg.bos_token_id})"
            + (f" and one of the mask tokens {list(cfg.mask_token_ids)}" if cfg.position == "rope_2d" else "")
            + " in every row of the prompt; ChatGLM's tokenizer appends [gMASK] <sop>"
        )
    return first, sop, mask - first


def glm_positions(first, sop, mask_pos, slots: torch.Tensor) -> torch.Tensor:
    """2-D position ids (B, 2, T) of the given slots (B, T)."""
    rel = slots - first[:, None]  # (B, T) from the first real token
    ctx = (sop - first)[:, None]
    in_ctx = rel < ctx
    pos = torch.where(in_ctx, rel, mask_pos[:, None]).clamp(min=0)
    block = torch.where(in_ctx, 0, rel - ctx + 1)
    return torch.stack((pos, block), dim=1)
