"""The one decoder-only Transformer every family is a configuration of.

    input_ids (B, T)
      -> embed                                   (B, T, d)
      -> n_layer x Block:
           x = x + attn(attn_norm(x))            pre-norm residual (LLaMA)
           x = x + mlp(mlp_norm(x))
         or, with parallel_residual (GPT-NeoX):
           x = x + attn(attn_norm(x)) + mlp(mlp_norm(x))
         or, with sandwich_norm (Grok-1):
           x = x + post_attn_norm(attn(attn_norm(x))); x = x + post_mlp_norm(mlp(mlp_norm(x)))
         or, with norm_placement="deepnorm" (GLM):
           h = attn_norm(x); x = alpha*h + attn(h); h = mlp_norm(x); x = alpha*h + mlp(h)
      -> norm -> lm_head                         (B, T, vocab)

`forward(ids)` is a plain causal pass. With a cache set up (`setup_cache`), `forward(ids, start=s)`
writes slots [s, s+T) and attends to slots [0, s+T); `attention_mask` (B, s+T) marks real tokens
(0 = left padding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError, ContextLengthError, GenerationError
from lmzoo.nn.alibi import alibi_bias, alibi_slopes
from lmzoo.nn.attention import Attention, build_mask
from lmzoo.nn.mla import MLAttention
from lmzoo.nn.mlp import MLP
from lmzoo.nn.moe import MoE
from lmzoo.nn.norm import build_norm
from lmzoo.nn.rope import RotaryEmbedding


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.attn = MLAttention(cfg, layer) if cfg.attention == "mla" else Attention(cfg, layer)
        self.mlp_norm = None if cfg.shared_norm else build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.layer_is_moe(layer) else MLP(cfg)
        self.parallel = cfg.parallel_residual
        self.post_norm = cfg.norm_placement == "post"
        self.deepnorm = cfg.norm_placement == "deepnorm"
        self.alpha = cfg.deepnorm_alpha
        if cfg.sandwich_norm:  # norms on the sublayer outputs too (Grok-1)
            self.post_attn_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
            self.post_mlp_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.sandwich = cfg.sandwich_norm

    def forward(self, x, cos, sin, mask, start: int | None = None, q_scale=None, query=None):
        if query is not None:  # PanGu-alpha's query layer: the query is a position embedding
            x = x + self.attn(self.attn_norm(x), cos, sin, mask, start, q_scale, query_input=query)
            return x + self.mlp(self.mlp_norm(x))
        if self.deepnorm:  # the residual is the normalised input, scaled by alpha (GLM's GLMBlock)
            h = self.attn_norm(x)
            x = h * self.alpha + self.attn(h, cos, sin, mask, start, q_scale)
            h = self.mlp_norm(x)
            return h * self.alpha + self.mlp(h)
        if self.post_norm:  # x = norm(x + f(x)): the norms sit after each residual add
            x = self.attn_norm(x + self.attn(x, cos, sin, mask, start, q_scale))
            return self.mlp_norm(x + self.mlp(x))
        if self.sandwich:
            x = x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, mask, start, q_scale))
            return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))
        h = self.attn_norm(x)
        a = self.attn(h, cos, sin, mask, start, q_scale)
        if self.parallel:  # both branches read the same input (GPT-NeoX / GPT-J)
            return x + a + self.mlp(h if self.mlp_norm is None else self.mlp_norm(x))
        x = x + a
        return x + self.mlp(self.mlp_norm(x))


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
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps) if cfg.final_norm else None
        self.lm_head = nn.Linear(e, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RotaryEmbedding(cfg) if cfg.position in ("rope", "rope_2d") else None
        if cfg.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        # distinct (window, chunk) attention patterns; one mask is built per pattern per forward
        self.patterns = sorted({(cfg.layer_window(i), cfg.layer_chunk(i)) for i in range(cfg.n_layer)}, key=str)
        self.cache_batch = 0
        self.cache_len = 0
        self.prefix_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # prefix LM, per row
        self.prefill_lengths: torch.Tensor | None = None  # ntk_alpha RoPE: each row's prompt length

    def reset_buffers(self, device=None) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies, ALiBi slopes), e.g. after a
        meta-device build."""
        if self.rope is not None:
            self.rope.reset_buffers(device=device)
        if self.config.position == "alibi":
            self.alibi_slopes = alibi_slopes(self.config.n_head, device=device)

    # --- cache ---------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int, *, dtype=None, device=None) -> None:
        """Preallocate a static KV cache for `batch` rows of up to `max_len` tokens."""
        if max_len > self.config.max_seq_len:
            raise ContextLengthError(
                f"cache length {max_len} exceeds the model's context of {self.config.max_seq_len} tokens"
            )
        p = self.embed.weight
        dtype, device = dtype or p.dtype, device or p.device
        if batch == self.cache_batch and max_len <= self.cache_len and self.layers[0].attn.cache is not None:
            k = self.layers[0].attn.cache.k
            usable = not k.is_inference() or torch.is_inference_mode_enabled()
            if usable and k.dtype == dtype and k.device == torch.device(device):
                return  # reuse: stale slots are never attended to (masks stop at s+T)
        for layer in self.layers:
            layer.attn.cache = layer.attn.make_cache(batch, max_len, dtype=dtype, device=device)
        self.cache_batch, self.cache_len = batch, max_len

    def set_mla_cache(self, kind: str) -> None:
        """Switch every MLA layer between the "expanded" and the "latent" cache (lmzoo.nn.mla)."""
        if self.config.attention != "mla":
            raise ConfigError(f"mla_cache applies to MLA models (DeepSeek-V2/V3); this model has "
                              f"attention={self.config.attention!r}")
        self.config = self.config.replace(mla_cache=kind)  # validates kind
        self.clear_cache()
        for layer in self.layers:
            layer.attn.latent = kind == "latent"

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attn.cache = None
        self.cache_batch = self.cache_len = 0

    # --- forward -------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        start: int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); with last_only, (B, 1, vocab) for the last position only (what
        generation needs: the head is the largest matrix, so a prefill skips T-1 rows of it)."""
        B, T = input_ids.shape
        cached = start is not None
        start = start or 0
        end = start + T
        if cached:
            if self.layers[0].attn.cache is None:
                raise ValueError("forward(start=...) needs a KV cache; call setup_cache first")
            if B != self.cache_batch or end > self.cache_len:
                raise ContextLengthError(
                    f"batch {B} x length {end} does not fit the cache of batch {self.cache_batch} "
                    f"x length {self.cache_len}"
                )
        if end > self.config.max_seq_len:
            raise ContextLengthError(
                f"sequence of {end} tokens exceeds the model's context of {self.config.max_seq_len}"
            )
        prefix_end = None
        if self.config.prefix_lm:
            if start == 0:  # a prefill: find each row's context and [gMASK]; decode steps reuse them
                self.prefix_state = prefix_lm_state(input_ids, attention_mask, self.config)
            elif self.prefix_state is None or self.prefix_state[0].shape[0] != B:
                raise GenerationError("a prefix-LM decode step (start > 0) needs the prefill (start=0) of the same batch first")
            first, prefix_end, mask_pos = self.prefix_state
            if position_ids is None and self.config.position == "rope_2d":
                position_ids = glm_positions(first, prefix_end, mask_pos, start, end)
        if position_ids is None:
            if attention_mask is not None:
                # left padding: a row's first real token is position 0
                pos = attention_mask.long().cumsum(-1) - 1
                position_ids = pos.clamp(min=0)[:, start:end]
            else:
                position_ids = torch.arange(start, end, device=input_ids.device)[None].expand(B, T)

        x = self.embed_tokens(input_ids, position_ids)
        cos = sin = bias = None
        q_scale = self.logn_scale(position_ids)
        if self.rope is not None:
            lengths = None
            if self.config.rope_scaling.kind == "ntk_alpha":  # fixed at prefill (Qwen v1), per row
                if start == 0 or self.prefill_lengths is None or self.prefill_lengths.shape[0] != B:
                    self.prefill_lengths = attention_mask[:, :end].sum(-1) if attention_mask is not None \
                        else torch.full((B,), end, device=x.device)
                lengths = self.prefill_lengths
            cos, sin = self.rope(position_ids, x.dtype, lengths)
        elif self.config.position == "alibi":
            # key positions of every visible slot, counted from each row's first real token
            keys = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, :end] if attention_mask is not None \
                else torch.arange(end, device=x.device)[None]
            cfg = self.config
            scale = (cfg.attn_scale or cfg.head_dim ** -0.5) if cfg.alibi_scaled else 1.0
            bias = alibi_bias(self.alibi_slopes, keys, dtype=cfg.alibi_dtype, scale=scale)  # (B or 1, n_head, 1, end)
        masks = {}
        slot_pos = None
        for w, c in self.patterns:
            if attention_mask is None and w is None and c is None and bias is None and prefix_end is None and \
                    (start == 0 or T == 1):
                masks[w, c] = None  # plain causal: let SDPA pick its fused path
                continue
            if c is not None and slot_pos is None:  # every slot's position, counted per row
                slot_pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, :end] \
                    if attention_mask is not None else torch.arange(end, device=x.device)[None]
            m = build_mask(q_start=start, T=T, key_valid=attention_mask, window=w, device=x.device,
                           chunk=c, positions=slot_pos, prefix_end=prefix_end)
            if bias is not None:  # additive float mask: the bias where allowed, -inf elsewhere
                m = bias.to(x.dtype).masked_fill(~m, float("-inf"))
            masks[w, c] = m
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            query = None
            if self.config.query_layer and i == last:  # PanGu-alpha: final norm, then the query layer
                x, query = self.norm(x), self.query_embed(position_ids)
            x = layer(x, cos, sin, masks[layer.attn.window, getattr(layer.attn, "chunk", None)],
                      start if cached else None, q_scale, query)
        if last_only:
            x = x[:, -1:]
        return self.logits(x)

    # --- pieces shared with lmzoo.static_decode ---------------------------------------------------
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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, projection and LM head: (B, T, d) -> (B, T, vocab)."""
        if self.norm is not None and not self.config.query_layer:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        logits = self.lm_head(x)
        return logits * self.config.logit_scale if self.config.logit_scale != 1.0 else logits


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


def glm_positions(first, sop, mask_pos, start: int, end: int) -> torch.Tensor:
    """2-D position ids (B, 2, end - start) of slots [start, end)."""
    rel = torch.arange(start, end, device=first.device)[None] - first[:, None]  # (B, T) from the first real token
    ctx = (sop - first)[:, None]
    in_ctx = rel < ctx
    pos = torch.where(in_ctx, rel, mask_pos[:, None]).clamp(min=0)
    block = torch.where(in_ctx, 0, rel - ctx + 1)
    return torch.stack((pos, block), dim=1)
