"""`ModelConfig`: every architectural switch of a decoder-only Transformer, as named fields.

The seeds' observation is that LLaMA, Qwen, Mistral, Baichuan, Yi, ... are one network that differs
in a handful of switches. Each switch is a field here; each *choice* is a plain string (so a config
round-trips through JSON) resolved in exactly one place in `lmzoo.nn`. Model and loader code never
look at a model's name.

Field names follow litgpt/HF where a convention exists:

    n_embd            model width d
    n_head            query heads
    n_kv_head         key/value heads (== n_head: MHA, 1: MQA, otherwise GQA)
    head_dim          per-head width (defaults to n_embd // n_head)
    intermediate_size MLP hidden width
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from lmzoo.errors import ConfigError

NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "geglu", "gelu", "gelu_tanh", "relu")  # gated (swiglu/geglu) or plain two-layer
POSITIONS = ("rope", "rope_2d", "alibi", "learned", "none")
ROPE_SCALINGS = ("none", "linear", "dynamic", "ntk_alpha", "llama3", "yarn", "longrope")


Residual = Literal["pre", "post", "deepnorm", "sandwich", "parallel"]


@dataclass(kw_only=True)
class RopeScaling:
    """Context-extension rule applied to RoPE's inverse frequencies.

    kind:
      linear   positions divided by `factor` (Chen et al. 2023, "position interpolation")
      dynamic  NTK-aware base rescaled once the sequence exceeds `original_max_position`
      ntk_alpha  Qwen (v1)'s dynamic NTK: base * alpha^(d/(d-2)) with alpha = 2^ceil(log2(L/L0) + 1) - 1
               (at least 1), L the prompt length *at prefill*; decode steps keep that alpha
      llama3   Llama 3.1's piecewise wavelength rule (`low_freq_factor`, `high_freq_factor`)
      yarn     YaRN (Peng et al. 2023): NTK-by-parts ramp between `beta_fast` and `beta_slow`,
               plus the attention temperature `mscale` applied to cos/sin
      longrope LongRoPE (Ding et al. 2024; Phi-3): per-frequency divisors, `short_factor` up to
               `original_max_position` tokens and `long_factor` beyond, plus an attention factor
    """

    kind: str = "none"
    factor: float = 1.0
    original_max_position: int | None = None
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # YaRN's mscale; None -> 0.1 * ln(factor) + 1
    truncate: bool = True  # YaRN: round the correction range to whole dims (HF default)
    short_factor: tuple[float, ...] = ()  # LongRoPE
    long_factor: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.short_factor, self.long_factor = tuple(self.short_factor), tuple(self.long_factor)
        self._validate()

    @property
    def refill_at(self) -> int | None:
        """Cache slot at which a generation must recompute its whole cache. LongRoPE switches every
        frequency once the sequence outgrows the trained context; the reference (Phi-3 in HF) then
        drops the cache and re-encodes everything with the long factors, once."""
        return self.original_max_position if self.kind == "longrope" else None

    def _validate(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ConfigError(f"rope_scaling.kind={self.kind!r} is not one of {ROPE_SCALINGS}")
        if self.kind != "none" and self.factor <= 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")
        if self.kind in ("llama3", "yarn", "dynamic", "ntk_alpha", "longrope") and not self.original_max_position:
            raise ConfigError(f"rope_scaling kind {self.kind!r} needs original_max_position")
        if self.kind == "longrope" and (not self.short_factor or len(self.short_factor) != len(self.long_factor)):
            raise ConfigError("longrope needs short_factor and long_factor of equal, non-zero length")


@dataclass(kw_only=True)
class ModelConfig:
    name: str = "custom"
    # --- sizes -------------------------------------------------------------------------------
    vocab_size: int
    n_layer: int
    n_embd: int
    n_head: int
    n_kv_head: int | None = None  # None -> n_head (MHA)
    head_dim: int | None = None  # None -> n_embd // n_head
    intermediate_size: int
    max_seq_len: int = 2048  # context length the model was trained for
    # --- normalisation -----------------------------------------------------------------------
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    # "pre": x + f(norm(x)) (GPT-2 onwards); "post": norm(x + f(x)) (the original Transformer, OPT-350m);
    # "deepnorm": h = norm(x); x = deepnorm_alpha * h + f(h) -- the residual carries the *normalised*
    # input, scaled (GLM-130B / ChatGLM-6B's code; the same as DeepNorm's post-LN
    # x_{l+1} = LN(alpha x_l + f(x_l)), Wang et al. 2022, arXiv 2203.00555, with one more LN on the embeddings)
    norm_placement: str = "pre"
    deepnorm_alpha: float = 1.0  # GLM: sqrt(2 * n_layer)
    # a second norm on each sublayer's *output*, before the residual add (Grok-1):
    #   x = x + post_attn_norm(attn(attn_norm(x)));  x = x + post_mlp_norm(mlp(mlp_norm(x)))
    sandwich_norm: bool = False
    final_norm: bool = True  # a norm before the LM head (post-norm models have none)
    # --- MLP ---------------------------------------------------------------------------------
    mlp: str = "swiglu"
    mlp_bias: bool = False
    # --- attention ---------------------------------------------------------------------------
    qkv_bias: bool = False  # bias on the q, k, v projections (Qwen1.5/2/2.5)
    attn_out_bias: bool = False  # bias on the output projection
    qk_norm: bool = False  # normalise q and k per head before RoPE
    # "rmsnorm": one RMSNorm shared by all heads (Qwen3); "layernorm_per_head": a bias-free LayerNorm
    # with its own weight for every head (StableLM-2-12B)
    qk_norm_kind: str = "rmsnorm"  # ... or "l2": weightless RMS normalisation (Llama 4)
    qk_norm_layers: tuple[int, ...] | None = None  # None -> every layer
    sliding_window: int | None = None  # keys older than this many positions are not seen
    # which layers use the window; None -> all layers (Mistral). Qwen2 windows only some layers.
    sliding_window_layers: tuple[int, ...] | None = None
    attn_scale: float | None = None  # softmax scale; None -> 1/sqrt(head_dim)
    # scores soft-capped as cap * tanh(scores / cap) after scaling, before the mask (Grok-1: 30)
    attn_logit_softcap: float | None = None
    # chunked attention (Llama 4): a query sees only keys of its own attention_chunk-sized block of
    # positions, on chunked_layers (None -> all layers when attention_chunk is set)
    attention_chunk: int | None = None
    chunked_layers: tuple[int, ...] | None = None
    # layers that use no position encoding at all (Llama 4's NoPE layers); None -> none
    nope_layers: tuple[int, ...] | None = None
    # NoPE layers' query temperature (Llama 4, arXiv 2501.19399):
    #   q *= 1 + attn_temperature_scale * log(1 + floor((pos + 1) / attn_temperature_floor)); 0 = off
    attn_temperature_floor: int = 0
    attn_temperature_scale: float = 0.0
    # "standard" (per-head q/k/v projections) or "mla" (DeepSeek's multi-head latent attention;
    # head_dim becomes qk_nope_head_dim + qk_rope_head_dim and RoPE covers qk_rope_head_dim)
    attention: str = "standard"
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # what an MLA layer caches: "expanded" per-head k and v (B, H, L, qk + v), or "latent": only the
    # normalised latent and the shared RoPE key (B, L, kv_lora_rank + qk_rope_head_dim), attending in
    # the latent space with W_kvb absorbed into the query and the output (DeepSeek-V2 sec. 2.1.3)
    mla_cache: str = "expanded"
    # eps of MLA's q/kv latent RMSNorms: DeepSeek's code builds them with the class default 1e-6,
    # not rms_norm_eps (the same in every released config, but not in general)
    latent_norm_eps: float = 1e-6
    # --- position ----------------------------------------------------------------------------
    # rope | rope_2d | alibi (BLOOM, Baichuan-13B) | learned (GPT-2, OPT) | none
    # rope_2d (GLM, ChatGLM-6B): each head is two halves; the first is rotated by the token's position,
    # the second by its *block* position (0 in the context, 1, 2, ... in the generated span)
    position: str = "rope"
    position_offset: int = 0  # learned tables indexed at position + offset (OPT: 2)
    # ALiBi as Falcon-RW's released code computes it: the bias joins q.k *before* the softmax scale,
    # softmax((q.k + bias) / sqrt(hd)) (BLOOM: q.k / sqrt(hd) + bias), and slope x position is
    # evaluated in alibi_dtype ("bfloat16" there; "float32" for BLOOM and Baichuan)
    alibi_scaled: bool = False
    alibi_dtype: str = "float32"
    rope_theta: float = 10000.0
    rotary_percentage: float = 1.0  # fraction of each head's dims that RoPE rotates
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    # dtype the cos/sin tables are computed in. ChatGLM-6B's code builds them in float16 whatever the
    # model runs in (angles rounded to fp16: ~1e-3 relative), and its weights were trained with that
    rope_table_dtype: str = "float32"
    # log-n attention scaling (Qwen v1, "use_logn_attn"): a query at position p (0-based) with
    # p + 1 > logn_attn_base is multiplied by log(p + 1) / log(logn_attn_base), keeping the attention
    # entropy of longer contexts close to the trained one. None = off
    logn_attn_base: int | None = None
    # --- GLM prefix-LM inputs (ChatGLM-6B, GLM-130B) -----------------------------------------------
    # prefix_lm: tokens before the first bos_token_id (GLM's <sop>) attend to each other in both
    # directions; from <sop> on attention is causal. mask_token_ids: GLM's [gMASK], [MASK] in order of
    # precedence; the position of the first one present is the position id of the generated span
    prefix_lm: bool = False
    mask_token_ids: tuple[int, ...] = ()
    # --- mixture of experts (0 experts: dense MLP everywhere) -------------------------------------
    n_experts: int = 0
    n_experts_per_tok: int = 0
    moe_intermediate_size: int | None = None  # expert width; None -> intermediate_size
    moe_renormalize: bool = True  # renormalise the top-k router probabilities (Mixtral: yes)
    shared_expert_size: int = 0  # an always-on expert (Qwen2-MoE, DeepSeekMoE); 0 = none
    shared_expert_gate: bool = True  # its output scaled by sigmoid(x w) (Qwen2-MoE) or not (DeepSeek)
    # router: "softmax" probabilities (Mixtral, Qwen, DeepSeek-V2) or "sigmoid" scores (DeepSeek-V3);
    # experts come in router_groups groups and only the best router_topk_groups groups are eligible,
    # a group scored by its best expert ("max", V2) or its best two ("top2", V3)
    router: str = "softmax"
    router_groups: int = 1
    router_topk_groups: int = 1
    router_group_score: str = "max"
    router_bias: bool = False  # V3: a learned bias added to the scores for *selection* only
    routed_scaling: float = 1.0  # routed experts' weights multiplied by this
    moe_scale_input: bool = False  # Llama 4: each expert sees weight * x instead of weighting its output
    moe_layers: tuple[int, ...] | None = None  # layers with MoE; None -> all (when n_experts > 0)
    # --- residual layout ---------------------------------------------------------------------
    # sequential (LLaMA):  x = x + attn(n1(x));  x = x + mlp(n2(x))
    # parallel (GPT-NeoX, GPT-J, Falcon):  x = x + attn(n1(x)) + mlp(n2(x))
    parallel_residual: bool = False
    # one norm feeds both parallel branches (GPT-J, CodeGen, Falcon-7B); no separate mlp norm
    shared_norm: bool = False
    # --- embeddings / head -------------------------------------------------------------------
    embed_norm: bool = False  # a norm right after the token embedding (BLOOM)
    # token-embedding width when it differs from n_embd: project_in after the embedding, project_out
    # before the (tied) head (OPT-350m); None = n_embd
    embed_dim: int | None = None
    tie_embeddings: bool = False
    lm_head_bias: bool = False  # GPT-J, CodeGen
    # PanGu-alpha's top "query layer": the last block's attention query comes from a learned table of
    # query-position embeddings (query_embed, (max_seq_len, d)) instead of the hidden state, and the
    # final norm sits *before* that block (its output goes straight to the head)
    query_layer: bool = False
    # constant multipliers on the token embeddings and on the logits (Grok-1: 78.38 = sqrt(6144), 0.577)
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    # --- token ids the checkpoint declares (used by generation, not by the network) -----------
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if isinstance(self.eos_token_id, int):
            self.eos_token_id = (self.eos_token_id,)
        self.eos_token_id = tuple(self.eos_token_id or ())
        if self.sliding_window_layers is not None:
            self.sliding_window_layers = tuple(self.sliding_window_layers)
        self.mask_token_ids = tuple(self.mask_token_ids or ())
        for k in ("moe_layers", "chunked_layers", "nope_layers", "qk_norm_layers"):
            if getattr(self, k) is not None:
                setattr(self, k, tuple(getattr(self, k)))
        if self.n_experts and self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        if self.attention == "mla":
            self.head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            self.n_kv_head = self.n_head
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            if self.n_head <= 0 or self.n_embd % self.n_head:
                raise ConfigError(
                    f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; set head_dim"
                )
            self.head_dim = self.n_embd // self.n_head
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def positive(**kw: int) -> None:
            for k, v in kw.items():
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ConfigError(f"{k} must be a positive integer, got {v!r}")

        positive(
            vocab_size=self.vocab_size, n_layer=self.n_layer, n_embd=self.n_embd,
            n_head=self.n_head, n_kv_head=self.n_kv_head, head_dim=self.head_dim,
            intermediate_size=self.intermediate_size, max_seq_len=self.max_seq_len,
        )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"
            )
        for fname, allowed in (("norm", NORMS), ("mlp", MLPS), ("position", POSITIONS),
                               ("norm_placement", ("pre", "post", "deepnorm")),
                               ("rope_table_dtype", ("float32", "float16")), ("mla_cache", ("expanded", "latent")),
                               ("qk_norm_kind", ("rmsnorm", "layernorm_per_head", "l2")),
                               ("attention", ("standard", "mla")), ("router", ("softmax", "sigmoid")),
                               ("router_group_score", ("max", "top2")),
                               ("alibi_dtype", ("float32", "bfloat16"))):
            if getattr(self, fname) not in allowed:
                raise ConfigError(f"{fname}={getattr(self, fname)!r} is not one of {allowed}")
        s = self.rope_scaling
        if s.kind == "longrope" and len(s.short_factor) != self.rope_dim // 2:
            raise ConfigError(f"longrope factors have {len(s.short_factor)} entries; RoPE has {self.rope_dim // 2} "
                              "frequencies")
        if self.position == "rope_2d" and self.head_dim % 4:
            raise ConfigError(f"rope_2d rotates two halves of each head in pairs; head_dim={self.head_dim} "
                              "must be a multiple of 4")
        if self.position == "rope_2d" and not (self.prefix_lm and self.mask_token_ids):
            raise ConfigError("position='rope_2d' needs prefix_lm=True and mask_token_ids (GLM's block positions "
                              "start at <sop> and the span's position is the [gMASK]/[MASK] position)")
        if self.prefix_lm and self.bos_token_id is None:
            raise ConfigError("prefix_lm=True needs bos_token_id (the token that ends the bidirectional prefix)")
        if self.deepnorm_alpha != 1.0 and self.norm_placement != "deepnorm":
            raise ConfigError(f"deepnorm_alpha={self.deepnorm_alpha} only applies to norm_placement='deepnorm', "
                              f"got {self.norm_placement!r}")
        if self.position == "rope" and (self.rope_dim % 2 or self.rope_dim <= 0):
            raise ConfigError(
                f"RoPE needs an even, positive rotary width; head_dim={self.head_dim} x "
                f"rotary_percentage={self.rotary_percentage} gives {self.rope_dim}"
            )
        if self.query_layer and (self.attention != "standard" or self.n_layer < 2 or not self.final_norm):
            raise ConfigError("query_layer needs standard attention, n_layer >= 2 and a final norm (applied before "
                              f"the query layer); got attention={self.attention!r}, n_layer={self.n_layer}, "
                              f"final_norm={self.final_norm}")
        if self.attn_logit_softcap is not None and self.attn_logit_softcap <= 0:
            raise ConfigError(f"attn_logit_softcap must be > 0 or None, got {self.attn_logit_softcap}")
        if self.sandwich_norm and self.norm_placement != "pre":
            raise ConfigError(f"sandwich_norm adds output norms to pre-norm blocks; norm_placement={self.norm_placement!r}")
        if self.logn_attn_base is not None and self.logn_attn_base < 2:
            raise ConfigError(f"logn_attn_base must be >= 2 (a trained context length), got {self.logn_attn_base}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be > 0 or None, got {self.sliding_window}")
        if self.sliding_window_layers is not None:
            bad = [i for i in self.sliding_window_layers if not 0 <= i < self.n_layer]
            if bad:
                raise ConfigError(f"sliding_window_layers {bad} outside 0..{self.n_layer - 1}")
        if self.attention == "mla" and min(self.kv_lora_rank, self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise ConfigError("attention='mla' needs kv_lora_rank, qk_rope_head_dim and v_head_dim > 0")
        if self.n_experts and self.n_experts % self.router_groups:
            raise ConfigError(f"n_experts={self.n_experts} is not divisible by router_groups={self.router_groups}")
        if self.n_experts and not 0 < self.n_experts_per_tok <= self.n_experts:
            raise ConfigError(
                f"n_experts_per_tok={self.n_experts_per_tok} must be in 1..n_experts={self.n_experts}"
            )
        if self.norm_placement == "post" and self.parallel_residual:
            raise ConfigError("norm_placement='post' with parallel_residual is not a known layout")
        if self.shared_norm and not self.parallel_residual:
            raise ConfigError("shared_norm needs parallel_residual=True (one norm feeding both branches)")
        # floats a checkpoint can carry that would silently give NaN/inf logits (NaN fails every comparison,
        # so each is checked as "finite and in range", never as "not out of range")
        def finite(name: str, lo: float | None = None, *, strict: bool = True, hi: float | None = None) -> None:
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and math.isfinite(v) and (lo is None or (v > lo if strict else v >= lo)) \
                and (hi is None or v <= hi)
            if not ok:
                want = "a finite number" + (f" {'>' if strict else '>='} {lo}" if lo is not None else "") + \
                    (f" and <= {hi}" if hi is not None else "")
                raise ConfigError(f"{name} must be {want}, got {v!r}")

        finite("norm_eps", 0)
        finite("latent_norm_eps", 0)
        finite("rope_theta", 0)
        finite("rotary_percentage", 0, hi=1.0)
        finite("deepnorm_alpha", 0)
        finite("embed_scale", 0)
        finite("logit_scale", 0)
        finite("routed_scaling", 0)
        finite("attn_temperature_scale", 0, strict=False)
        if self.attn_scale is not None:
            finite("attn_scale", 0)
        if self.attn_logit_softcap is not None:
            finite("attn_logit_softcap", 0)
        # special-token ids index the embedding: each must lie in the vocabulary
        ids = {"bos_token_id": [self.bos_token_id], "pad_token_id": [self.pad_token_id],
               "eos_token_id": list(self.eos_token_id), "mask_token_ids": list(self.mask_token_ids)}
        for name, values in ids.items():
            bad = [v for v in values if v is not None and (not isinstance(v, int) or not 0 <= v < self.vocab_size)]
            if bad:
                raise ConfigError(f"{name} {bad[0]!r} is outside the vocabulary (0..{self.vocab_size - 1})")

    # --- derived ------------------------------------------------------------------------------
    @property
    def residual(self) -> Residual:
        """The block's residual layout, resolved from the checkpoint-facing switches in this one place
        (nn.block has one small class per layout)."""
        if self.parallel_residual:
            return "parallel"
        if self.sandwich_norm:
            return "sandwich"
        return self.norm_placement  # "pre" | "post" | "deepnorm"

    @property
    def q_size(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_head * self.head_dim

    @property
    def rope_dim(self) -> int:
        """Number of leading dims of each head that RoPE rotates (MLA: the decoupled rope part)."""
        if self.attention == "mla":
            return self.qk_rope_head_dim
        if self.position == "rope_2d":  # per half: each half has its own rotation (see rope_2d)
            return self.head_dim // 2
        return int(self.head_dim * self.rotary_percentage)

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    def layer_chunk(self, layer: int) -> int | None:
        if self.attention_chunk is None:
            return None
        return self.attention_chunk if self.chunked_layers is None or layer in self.chunked_layers else None

    def layer_uses_rope(self, layer: int) -> bool:
        return self.position in ("rope", "rope_2d") and (self.nope_layers is None or layer not in self.nope_layers)

    def layer_is_moe(self, layer: int) -> bool:
        return bool(self.n_experts) and (self.moe_layers is None or layer in self.moe_layers)

    def layer_window(self, layer: int) -> int | None:
        """Sliding-window size used by `layer`, or None for full causal attention."""
        if self.sliding_window is None:
            return None
        if self.sliding_window_layers is None or layer in self.sliding_window_layers:
            return self.sliding_window
        return None

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eos_token_id"] = list(self.eos_token_id)
        d["mask_token_ids"] = list(self.mask_token_ids)
        for k in ("sliding_window_layers", "moe_layers", "chunked_layers", "nope_layers", "qk_norm_layers"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
