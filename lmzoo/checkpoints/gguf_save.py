"""lmzoo -> GGUF files that llama.cpp (and lmzoo.checkpoints.gguf) read.

The inverse of the GGUF reader, read off the same tables: `gguf_weights` (lmzoo name -> GGUF tensors)
and `ARCHES` (the per-architecture switches, the q/k pair order among them). What a writer must choose
and a reader only observes — fused or split q|k|v and gate|up, the name of the MLP norm, whether a
tied head is written anyway — is one row per HF model_type in `EXPORTS`. Per tensor:

    lmzoo tensor --(undo the architecture's transforms)--> rows split into the GGUF parts
                 --(halves -> pairs for q/k where the arch rotates pairs)--> stacked experts
                 --(float32 / f16 / bf16 / gguf.quants.quantize)--> file

Before anything is written the metadata and tensor table are read back with the reader's own
`gguf_config`, and every field that changes the network must come back equal: a model an
architecture cannot hold (a LayerNorm model as `llama`, a biased head where the arch has none) is
refused with the fields that differ, instead of a file that loads as another network.

Tensors are streamed: the table is planned from shapes (the meta device), then each tensor is
assembled, quantised and written in turn, into `.NAME.tmp-PID` beside the destination, renamed into
place at the end (a failed write leaves no file under the final name). Block quantisation is the
`gguf` package's (gguf.quants.quantize: F16/BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and, for the K-quants
it cannot make, lmzoo.checkpoints.kquants' (Q4_K / Q5_K / Q6_K, the bytes llama.cpp's quantiser
writes), mixed per tensor as llama-quantize mixes Q4_K_M / Q5_K_M / Q6_K (`_k_mix`). As llama.cpp's
converter does, vectors, norms, routers and position tables stay F32.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmzoo.checkpoints.build import fill_template, name_template
from lmzoo.checkpoints.checkpoint import split_index
from lmzoo.checkpoints.gguf import ARCHES, GGUFArch, gguf_config, gguf_weights
from lmzoo.checkpoints.permute import pairs_to_halves
from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError, TokenizerError, UnsupportedModelError

# export type -> (GGML type name, llama.cpp's general.file_type name)
EXPORT_TYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
                "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
                "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
                # llama.cpp's K-quant mixtures: the type each tensor gets is `_k_mix`'s (lmzoo.checkpoints.kquants)
                "q4_k_m": ("Q4_K", "MOSTLY_Q4_K_M"), "q5_k_m": ("Q5_K", "MOSTLY_Q5_K_M"),
                "q6_k": ("Q6_K", "MOSTLY_Q6_K")}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
# a K-quant tensor whose rows are not a whole number of 256-blocks: llama.cpp's substitute
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


@dataclass(frozen=True)
class GGUFOut:
    """How llama.cpp's converter lays out one HF model_type (what the reader only observes)."""

    arch: str  # general.architecture: a key of lmzoo.checkpoints.gguf.ARCHES
    fused_qkv: bool = False  # attn_qkv (q, k, v rows in turn) instead of attn_q / attn_k / attn_v
    fused_gate_up: bool = False  # ffn_up holding gate | up (Phi-3, GLM-4) instead of ffn_gate + ffn_up
    mlp_norm: str = "ffn_norm"  # Falcon-40B's two norms: attn_norm_2 (ln_attn) and attn_norm (ln_mlp)
    head_always: bool = False  # output.weight written even when tied (the GPT-2 and BLOOM converters)
    parallel_key: bool = False  # writes {arch}.use_parallel_residual
    original_context: bool = False  # writes rope.scaling.original_context_length always (Phi-3)


EXPORTS: dict[str, GGUFOut] = {
    "llama": GGUFOut("llama"), "mistral": GGUFOut("llama"), "mixtral": GGUFOut("llama"),
    "baichuan": GGUFOut("baichuan"),
    "qwen": GGUFOut("qwen", fused_qkv=True),
    "qwen2": GGUFOut("qwen2"), "qwen3": GGUFOut("qwen3"),
    "qwen2_moe": GGUFOut("qwen2moe"), "qwen3_moe": GGUFOut("qwen3moe"),
    "phi3": GGUFOut("phi3", fused_qkv=True, fused_gate_up=True, original_context=True),
    "gpt_neox": GGUFOut("gptneox", fused_qkv=True, parallel_key=True),
    "falcon": GGUFOut("falcon", fused_qkv=True, mlp_norm="attn_norm_2"),
    "RefinedWeb": GGUFOut("falcon", fused_qkv=True, mlp_norm="attn_norm_2"),
    "RefinedWebModel": GGUFOut("falcon", fused_qkv=True, mlp_norm="attn_norm_2"),
    "bloom": GGUFOut("bloom", fused_qkv=True, head_always=True),
    "stablelm": GGUFOut("stablelm", parallel_key=True),
    "gpt2": GGUFOut("gpt2", fused_qkv=True, head_always=True),
    "gptj": GGUFOut("gptj"),
    "deepseek_v2": GGUFOut("deepseek2"), "deepseek_v3": GGUFOut("deepseek2"),
    "chatglm": GGUFOut("chatglm", fused_qkv=True, fused_gate_up=True),
    # transformers' `glm` (GLM-4-9B's layout): llama.cpp writes it as chatglm
    "glm": GGUFOut("chatglm", fused_qkv=True, fused_gate_up=True),
    "glm4": GGUFOut("glm4", fused_gate_up=True),
}

# tensors llama.cpp keeps in F32 whatever the file type (its converter's rule): vectors, norms,
# routers, position tables, RoPE factor tables
_F32_STEMS = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "position_embd.weight", "exp_probs_b.bias")
CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")


def _keeps_f32(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) < 2 or name.endswith(("_norm.weight", *_F32_STEMS)) or name in CONFIG_TENSORS


def _k_mix(file_type: str, default: str, arch: str, table: dict[str, tuple[int, ...]], n_expert: int,
           n_layer: int) -> dict[str, str]:
    """GGML type of every quantised tensor of a K-quant mixture, as llama.cpp's quantiser picks them
    (llama-quant.cpp, llama_tensor_get_type, for Q4_K_M / Q5_K_M / Q6_K without an importance matrix;
    the file's tensor order drives its per-kind counters): the output head (or a tied token table)
    Q6_K, half-ish of attn_v and ffn_down (`more_bits`) Q6_K, fused attn_qkv one step up, MoE tweaks,
    and rows that are no whole number of 256-blocks the 32-block type llama.cpp substitutes."""
    def more_bits(i: int, n: int) -> bool:  # first and last eighth, every third one between
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    has_output = "output.weight" in table
    n_v = sum("attn_v.weight" in n for n in table)
    n_down = sum("ffn_down" in n for n in table)
    i_v = i_down = 0
    out: dict[str, str] = {}
    for name, shape in table.items():
        t = default
        head = name == "output.weight" or (not has_output and name == "token_embd.weight")
        if head:
            t = "Q8_0" if arch == "falcon" or shape[-1] % 256 else "Q6_K"
        elif "attn_v.weight" in name:
            if file_type in ("MOSTLY_Q4_K_M", "MOSTLY_Q5_K_M") and more_bits(i_v, n_v):
                t = "Q6_K"
            if arch == "llama" and n_layer == 80 and t == "Q4_K":  # llama.cpp's 70B rule (8 heads share attn_v)
                t = "Q5_K"
            if n_expert == 8:
                t = "Q8_0"
            i_v += 1
        elif "attn_k.weight" in name:
            if n_expert == 8:
                t = "Q8_0"
        elif "ffn_down" in name:
            i = int(name.split(".")[1]) if n_expert > 1 else i_down  # experts: the layer from the name
            if file_type == "MOSTLY_Q4_K_M":
                if arch == "falcon":
                    t = "Q6_K" if i < n_down // 16 else "Q5_K" if more_bits(i, n_down) else "Q4_K"
                elif more_bits(i, n_down):
                    t = "Q6_K"
            elif file_type == "MOSTLY_Q5_K_M" and more_bits(i, n_down):
                t = "Q6_K"
            i_down += 1
        elif "attn_output.weight" in name:
            if arch != "falcon" and n_expert == 8 and file_type == "MOSTLY_Q4_K_M":
                t = "Q5_K"
        elif "attn_qkv.weight" in name:
            t = {"MOSTLY_Q4_K_M": "Q5_K", "MOSTLY_Q5_K_M": "Q6_K"}.get(file_type, t)
        out[name] = K_FALLBACK.get(t, t) if not head and shape[-1] % 256 else t
    return out


def export_spec(model_type: str | None) -> GGUFOut:
    if model_type not in EXPORTS:
        raise UnsupportedModelError(f"cannot write GGUF for model_type {model_type!r}; supported: "
                                    f"{', '.join(sorted(EXPORTS))}")
    return EXPORTS[model_type]


def _resolve_type(type: str) -> tuple[str, str]:
    key = str(type).lower()
    if key not in EXPORT_TYPES:
        raise ConfigError(f"GGUF export type {type!r} is not supported; supported: {', '.join(EXPORT_TYPES)}")
    return EXPORT_TYPES[key]


# --- the tensor map, reversed ----------------------------------------------------------------------

def _probe_names(spec: GGUFOut, cfg: ModelConfig) -> list[str]:
    """Tensor names of a file in this layout, as far as `gguf_weights` looks at them."""
    names = ["blk.0.attn_qkv.weight"] if spec.fused_qkv else ["blk.0.attn_q.weight"]
    gated = cfg.mlp in ("swiglu", "geglu")
    names += [] if spec.fused_gate_up or not gated else ["blk.0.ffn_gate.weight"]
    return names + ([] if cfg.shared_norm else [f"blk.0.{spec.mlp_norm}.weight"])


class _Plan:
    """lmzoo tensors -> (GGUF name, tensor) in file order. `meta=True` skips the moves that keep
    shapes (transforms, q/k pair order), to plan the tensor table from meta tensors."""

    def __init__(self, cfg: ModelConfig, spec: GGUFOut) -> None:
        self.cfg, self.spec = cfg, spec
        self.arch: GGUFArch = ARCHES[spec.arch]
        self.weights = gguf_weights(_probe_names(spec, cfg))

    def tensors(self, items: Iterable[tuple[str, torch.Tensor]], *, meta: bool = False
                ) -> Iterator[tuple[str, torch.Tensor]]:
        from lmzoo.checkpoints.save import _invert, _split_sizes

        cfg, arch = self.cfg, self.arch
        stacked: dict[str, dict[int, torch.Tensor]] = {}
        n_experts = cfg.n_experts
        embed = None
        for name, t in items:
            if name == "lm_head.weight" and cfg.tie_embeddings:
                continue
            template, index = name_template(name)
            if template not in self.weights:
                raise UnsupportedModelError(f"GGUF architecture {self.spec.arch!r} has no tensor for {name}")
            t = t.detach()
            if name == "embed.weight" and self.spec.head_always and cfg.tie_embeddings:
                embed = t
            if template in arch.transforms and not meta:
                t = _invert(arch.transforms[template], t.cpu(), cfg, name)
            parts = [fill_template(p, index) for p in self.weights[template]]
            pieces = t.split(_split_sizes(name, t, len(parts), cfg), dim=0) if len(parts) > 1 else [t]
            for part, piece in zip(parts, pieces):
                base, idx = split_index(part)
                if idx is not None:  # one expert of a stacked tensor: out when all have come
                    got = stacked.setdefault(base, {})
                    got[idx] = piece
                    if len(got) == n_experts:
                        yield base, torch.stack([got[e] for e in range(n_experts)])
                        del stacked[base]
                    continue
                yield from self._one(base, piece, meta)
        if embed is not None:
            yield "output.weight", embed
        yield from self._config_tensors()

    def _one(self, name: str, t: torch.Tensor, meta: bool) -> Iterator[tuple[str, torch.Tensor]]:
        cfg = self.cfg
        stem = name.split(".")[-2]
        if stem in ("attn_q", "attn_k") and self.arch.rope_pairs and not meta:
            heads = cfg.n_head if stem == "attn_q" else cfg.n_kv_head
            t = pairs_to_halves(t, heads=heads, rope_dim=cfg.rope_dim, inverse=True)
        if stem in ("attn_q_norm", "attn_k_norm") and self.arch.qk_norm_kind == "layernorm_per_head":
            t = t.reshape(cfg.n_head if stem == "attn_q_norm" else cfg.n_kv_head, -1)  # (n_head, head_dim)
        if stem == "attn_kv_b":  # MLA: per head [k nope | v] rows -> k_b (transposed) and v_b
            nope, v = cfg.qk_nope_head_dim, cfg.v_head_dim
            kv = t.reshape(cfg.n_head, nope + v, t.shape[-1])
            yield name.replace("attn_kv_b", "attn_k_b"), kv[:, :nope].transpose(1, 2).contiguous()
            yield name.replace("attn_kv_b", "attn_v_b"), kv[:, nope:].contiguous()
            return
        yield name, t

    def _config_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """RoPE factor tables, which the reader turns back into the config's rope_scaling."""
        from lmzoo.nn.rope import _base_inv_freq, inv_frequencies

        rs = self.cfg.rope_scaling
        if rs.kind == "llama3":  # Llama 3.1's rule as the converter stores it: one divisor per frequency
            inv, _ = inv_frequencies(self.cfg)
            yield "rope_freqs.weight", (_base_inv_freq(self.cfg.rope_theta, self.cfg.rope_dim) / inv).float()
        elif rs.kind == "longrope" and rs.short_factor == rs.long_factor and rs.factor == 1.0 \
                and self.spec.arch != "phi3":
            yield "rope_freqs.weight", torch.tensor(rs.long_factor, dtype=torch.float32)
        elif rs.kind == "longrope":  # Phi-3's LongRoPE: both tables
            yield "rope_factors_long.weight", torch.tensor(rs.long_factor, dtype=torch.float32)
            yield "rope_factors_short.weight", torch.tensor(rs.short_factor, dtype=torch.float32)


# --- metadata ------------------------------------------------------------------------------------

def gguf_arch_metadata(cfg: ModelConfig, spec: GGUFOut) -> dict[str, Any]:
    """The `{arch}.*` keys of a model (without the prefix), the inverse of gguf_config."""
    arch = ARCHES[spec.arch]
    m: dict[str, Any] = {
        "context_length": cfg.max_seq_len, "embedding_length": cfg.n_embd, "block_count": cfg.n_layer,
        "feed_forward_length": cfg.intermediate_size, "attention.head_count": cfg.n_head,
        "attention.head_count_kv": cfg.n_kv_head, "rope.freq_base": float(cfg.rope_theta),
        "rope.dimension_count": cfg.rope_dim, "vocab_size": cfg.vocab_size,
    }
    eps = "attention.layer_norm_rms_epsilon" if arch.norm == "rmsnorm" else "attention.layer_norm_epsilon"
    m[eps] = float(cfg.norm_eps)
    if cfg.attention != "mla":
        m |= {"attention.key_length": cfg.head_dim, "attention.value_length": cfg.head_dim}
    if spec.parallel_key:
        m["use_parallel_residual"] = bool(cfg.parallel_residual)
    if cfg.sliding_window:
        m["attention.sliding_window"] = int(cfg.sliding_window)
    if cfg.n_experts:
        moe = [i for i in range(cfg.n_layer) if cfg.layer_is_moe(i)]
        m |= {"expert_count": cfg.n_experts, "expert_used_count": cfg.n_experts_per_tok,
              "expert_feed_forward_length": cfg.moe_intermediate_size or cfg.intermediate_size,
              "expert_weights_norm": bool(cfg.moe_renormalize),
              "expert_gating_func": 2 if cfg.router == "sigmoid" else 1}
        if cfg.shared_expert_size:
            m["expert_shared_feed_forward_length"] = cfg.shared_expert_size
            m["expert_shared_count"] = max(1, cfg.shared_expert_size // (cfg.moe_intermediate_size or 1))
        m["expert_weights_scale"] = float(cfg.routed_scaling)
        if cfg.router_groups > 1:
            m |= {"expert_group_count": cfg.router_groups, "expert_group_used_count": cfg.router_topk_groups}
        if moe and moe[0] > 0:
            m["leading_dense_block_count"] = moe[0]
    if cfg.attention == "mla":
        r, rope = cfg.kv_lora_rank, cfg.qk_rope_head_dim
        m |= {"attention.head_count_kv": 1, "attention.kv_lora_rank": r, "attention.key_length": r + rope,
              "attention.value_length": r, "attention.key_length_mla": cfg.qk_nope_head_dim + rope,
              "attention.value_length_mla": cfg.v_head_dim}
        if cfg.q_lora_rank:
            m["attention.q_lora_rank"] = cfg.q_lora_rank
    m |= _rope_scaling_metadata(cfg)
    if spec.original_context and "rope.scaling.original_context_length" not in m:
        m["rope.scaling.original_context_length"] = int(cfg.rope_scaling.original_max_position or cfg.max_seq_len)
    return m


def _rope_scaling_metadata(cfg: ModelConfig) -> dict[str, Any]:
    rs = cfg.rope_scaling
    if rs.kind in ("linear", "yarn"):
        m: dict[str, Any] = {"rope.scaling.type": rs.kind, "rope.scaling.factor": float(rs.factor)}
        if rs.original_max_position:
            m["rope.scaling.original_context_length"] = int(rs.original_max_position)
        if rs.kind == "yarn" and cfg.attention == "mla" and rs.factor > 1:
            # DeepSeek's YaRN temperature, kept by the reader in attn_scale: scale = qk^-0.5 * m^2
            qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            mul = math.sqrt((cfg.attn_scale or qk ** -0.5) / qk ** -0.5)
            if abs(mul - 1) > 1e-9:
                m["rope.scaling.yarn_log_multiplier"] = (mul - 1) / math.log(rs.factor)
        return m
    if rs.kind == "longrope" and not (rs.short_factor == rs.long_factor and rs.factor == 1.0):
        m = {"rope.scaling.original_context_length": int(rs.original_max_position or cfg.max_seq_len)}
        attn = rs.attention_factor
        if attn is None and rs.factor > 1:  # the value lmzoo's RoPE computes when the config leaves it
            attn = math.sqrt(1 + math.log(rs.factor) / math.log(rs.original_max_position))
        if attn is not None:
            m["rope.scaling.attn_factor"] = float(attn)
        return m
    return {}


# --- tokenizer metadata -----------------------------------------------------------------------------
UNUSED = 5  # llama.cpp's token type of padding entries


def tokenizer_metadata(tokenizer, vocab_size: int) -> dict[str, Any]:
    """`tokenizer.*` keys for `tokenizer`: a .gguf path (its keys copied as they are), a dict of such
    keys, or an lmzoo Tokenizer (its `gguf_vocabulary()`: byte-level BPE -> `gpt2` with merges and the
    matching `pre`; SentencePiece -> `llama` with scores and token types). The token list is padded to
    the model's vocabulary with [PAD{i}] entries (as llama.cpp's converter pads); a vocabulary larger
    than the model's is refused."""
    if isinstance(tokenizer, (str, Path)):
        from lmzoo.checkpoints.gguf import gguf_metadata

        meta = {k: v for k, v in gguf_metadata(tokenizer).items() if k.startswith("tokenizer.")}
    elif isinstance(tokenizer, dict):
        meta = dict(tokenizer)
    elif hasattr(tokenizer, "gguf_vocabulary"):
        meta = tokenizer.gguf_vocabulary()
    else:
        raise TokenizerError(f"cannot write a GGUF vocabulary from {type(tokenizer).__name__}")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if len(tokens) > vocab_size:
        raise TokenizerError(f"the tokenizer has {len(tokens)} tokens but the model's vocabulary is {vocab_size}; "
                             "they do not belong together")
    if len(tokens) < vocab_size:
        pad = vocab_size - len(tokens)
        meta["tokenizer.ggml.tokens"] = tokens + [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
        if "tokenizer.ggml.token_type" in meta:
            meta["tokenizer.ggml.token_type"] = list(meta["tokenizer.ggml.token_type"]) + [UNUSED] * pad
        if "tokenizer.ggml.scores" in meta:
            meta["tokenizer.ggml.scores"] = list(meta["tokenizer.ggml.scores"]) + [-1e9] * pad
    return meta


# --- checks before writing ---------------------------------------------------------------------------

@dataclass
class _StubTensor:
    name: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))


class _StubReader:
    """What gguf_config reads, from the planned file: metadata and the tensor table."""

    def __init__(self, metadata: dict[str, Any], tensors: dict[str, _StubTensor]) -> None:
        self.metadata, self.tensors = metadata, tensors

    def array(self, t: _StubTensor) -> np.ndarray:
        return t.data


# fields the file does not have to carry: names, token ids (from the vocabulary), inference choices
_FREE_FIELDS = {"name", "bos_token_id", "eos_token_id", "pad_token_id", "mla_cache"}
_MOE_FIELDS = {"n_experts_per_tok", "moe_intermediate_size", "moe_renormalize", "shared_expert_size",
               "shared_expert_gate", "router", "router_groups", "router_topk_groups", "router_group_score",
               "router_bias", "routed_scaling", "moe_scale_input", "moe_layers"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_holds(cfg: ModelConfig, spec: GGUFOut, metadata: dict[str, Any], table: dict[str, _StubTensor]) -> None:
    """The planned file read back with the reader's gguf_config must describe the same network."""
    arch_meta = {f"{spec.arch}.{k}": v for k, v in metadata.items()}
    reader = _StubReader({"general.architecture": spec.arch, **arch_meta}, table)
    back, _ = gguf_config(reader, Path(f"<{spec.arch} GGUF>"))
    skip = set(_FREE_FIELDS)
    if not cfg.n_experts:
        skip |= _MOE_FIELDS
    if not cfg.shared_expert_size:
        skip.add("shared_expert_gate")
    if spec.head_always:
        skip.add("tie_embeddings")
    if cfg.position != "alibi":
        skip |= {"alibi_scaled", "alibi_dtype"}
    if cfg.position != "rope":
        skip |= {"rope_theta", "rotary_percentage", "rope_table_dtype"}
    diffs = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in skip:
            continue
        ours, theirs = getattr(cfg, f.name), getattr(back, f.name)
        if f.name == "rope_scaling":  # the same frequencies at every length, however expressed
            ours, theirs = _rope_at(cfg, cfg), _rope_at(back, cfg)
        if f.name in ("n_kv_head", "head_dim", "attn_scale"):
            ours, theirs = _effective(cfg, f.name), _effective(back, f.name)
        if not _same(ours, theirs):
            diffs.append(f"{f.name}={ours!r} (would read back as {theirs!r})")
    if diffs:
        raise UnsupportedModelError(f"GGUF architecture {spec.arch!r} cannot hold this model: " + "; ".join(diffs))


def _rope_at(cfg: ModelConfig, src: ModelConfig) -> tuple:
    """RoPE's inverse frequencies and cos/sin scale at a few lengths (src's trained ones, past them)."""
    from lmzoo.nn.rope import inv_frequencies

    if cfg.position != "rope":
        return ()
    lengths = {1, src.max_seq_len, 2 * src.max_seq_len, src.rope_scaling.original_max_position or 1}
    out = []
    for n in sorted(lengths):
        inv, scale = inv_frequencies(cfg, n)
        out.append((tuple(round(float(x), 6) for x in inv / inv.abs().max()), round(float(inv.max()), 7),
                    round(scale, 6)))
    return tuple(out)


def _effective(cfg: ModelConfig, name: str):
    if name == "attn_scale":
        if cfg.attention == "mla":
            return cfg.attn_scale or (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
        return cfg.attn_scale or cfg.head_dim ** -0.5
    return getattr(cfg, name)


# --- writing -------------------------------------------------------------------------------------

def _nbytes(ggml: str, shape: tuple[int, ...]) -> int:
    import gguf

    if ggml == "F32":
        return 4 * math.prod(shape)
    if ggml in ("F16", "BF16"):
        return 2 * math.prod(shape)
    qk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ggml]]
    return math.prod(shape[:-1]) * shape[-1] // qk * size


def _encode(t: torch.Tensor, ggml: str) -> np.ndarray:
    import gguf

    from lmzoo.checkpoints import kquants

    a = np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())
    if ggml == "F32":
        return a
    if ggml == "F16":
        return a.astype(np.float16)
    if ggml in K_QUANTS:  # rows of a stacked (experts, rows, cols) tensor are rows like any other
        enc = getattr(kquants, f"quantize_{ggml.lower()}")
        return enc(a.reshape(-1, a.shape[-1])).reshape(*a.shape[:-1], -1)
    return gguf.quants.quantize(a, gguf.GGMLQuantizationType[ggml])


@dataclass
class WriteSummary:
    path: Path
    arch: str
    type: str
    n_tensors: int
    n_bytes: int
    types: dict[str, int]  # GGML type -> tensor count
    n_params: int
    vocabulary: str = "none"  # e.g. "gpt2 (pre smollm), 49152 tokens"

    def __str__(self) -> str:
        mix = ", ".join(f"{n} {k}" for k, n in sorted(self.types.items()))
        return (f"wrote {self.path}: GGUF {self.arch}, {self.type}, {self.n_tensors} tensors ({mix}), "
                f"{self.n_params / 1e6:.1f}M parameters, vocabulary {self.vocabulary}, {self.n_bytes / 2**20:.1f} MiB")


def write_gguf(path, cfg: ModelConfig, model_type: str | None, tensors: Callable[[], Iterable[tuple[str, torch.Tensor]]],
               shapes: Iterable[tuple[str, torch.Tensor]], *, tokenizer=None, type: str = "f16",
               overwrite: bool = False, progress: Callable[[int, int, str], None] | None = None,
               name: str | None = None) -> WriteSummary:
    """The streaming writer. tensors(): a fresh iterator of lmzoo (name, tensor) pairs; shapes: the same
    names with tensors of the right shapes (meta tensors will do), to plan the table."""
    import gguf

    ggml_type, file_type = _resolve_type(type)
    spec = export_spec(model_type)
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; a GGUF export is one file")
    plan = _Plan(cfg, spec)
    table: dict[str, _StubTensor] = {}
    kinds: dict[str, str] = {}
    for gname, t in plan.tensors(shapes, meta=True):
        shape = tuple(int(s) for s in t.shape)
        data = t.numpy() if gname in CONFIG_TENSORS else None
        table[gname] = _StubTensor(gname, shape, data)
        kinds[gname] = "F32" if _keeps_f32(gname, shape) else ggml_type
    if ggml_type in K_QUANTS:
        quantised = {n: table[n].shape for n, k in kinds.items() if k != "F32"}
        kinds.update(_k_mix(file_type, ggml_type, spec.arch, quantised, cfg.n_experts or 1, cfg.n_layer))
    _check_blocks(spec, kinds, table, ggml_type)
    metadata = gguf_arch_metadata(cfg, spec)
    check_holds(cfg, spec, metadata, table)
    tok_meta = tokenizer_metadata(tokenizer, cfg.vocab_size) if tokenizer is not None else {}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), spec.arch)
    total = sum(_nbytes(kinds[n], t.shape) for n, t in table.items())
    done = 0
    try:
        w.add_name(name or cfg.name)
        w.add_file_type(int(gguf.LlamaFileType[file_type]))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for k, v in metadata.items():
            _add(w, f"{spec.arch}.{k}", v)
        for k, v in tok_meta.items():
            _add(w, k, v)
        for gname, st in table.items():
            k = kinds[gname]
            if k in ("F32", "F16"):
                w.add_tensor_info(gname, st.shape, np.dtype(np.float32 if k == "F32" else np.float16),
                                  _nbytes(k, st.shape))
            else:
                qk, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[k]]
                byte_shape = (*st.shape[:-1], st.shape[-1] // qk * size)
                w.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), _nbytes(k, st.shape),
                                  raw_dtype=gguf.GGMLQuantizationType[k])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for gname, t in plan.tensors(tensors()):
            st = table.get(gname)
            if st is None or tuple(t.shape) != st.shape:
                raise UnsupportedModelError(f"tensor {gname} {tuple(t.shape)} does not match the planned table")
            a = _encode(t, kinds[gname])
            w.write_tensor_data(a)
            done += a.nbytes
            if progress is not None:
                progress(done, total, gname)
        w.close()
        os.replace(tmp, out)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    counts: dict[str, int] = {}
    for k in kinds.values():
        counts[k] = counts.get(k, 0) + 1
    n_params = sum(math.prod(t.shape) for n, t in table.items() if n not in CONFIG_TENSORS)
    vocab = "none"
    if tok_meta:
        vocab = (f"{tok_meta.get('tokenizer.ggml.model')} (pre {tok_meta.get('tokenizer.ggml.pre', 'default')}), "
                 f"{len(tok_meta.get('tokenizer.ggml.tokens') or [])} tokens"
                 + (", chat template" if tok_meta.get("tokenizer.chat_template") else ""))
    return WriteSummary(out, spec.arch, ggml_type, len(table), out.stat().st_size, counts, n_params, vocab)


def _check_blocks(spec: GGUFOut, kinds: dict[str, str], table: dict[str, _StubTensor], ggml_type: str) -> None:
    import gguf

    def block(k: str) -> int:  # columns a block spans; a K-quant mixture's narrowest is its 32-block fallback
        if k in ("F32", "F16", "BF16"):
            return 1
        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[K_FALLBACK.get(k, k)]][0]

    bad = [(n, table[n].shape[-1], k) for n, k in kinds.items() if table[n].shape[-1] % block(k)]
    if bad:
        n, width, k = bad[0]
        fits = [t for t, (g, _) in EXPORT_TYPES.items() if all(w % block(g) == 0 for _, w, _ in bad)]
        raise ConfigError(f"{k.lower()} blocks span {block(k)} columns but {n} has rows of {width} "
                          f"({len(bad)} tensor(s) so); this model can be written as: {', '.join(fits)}")


def _add(w, key: str, v: Any) -> None:
    import gguf

    if isinstance(v, bool):
        w.add_bool(key, v)
    elif isinstance(v, int):
        w.add_uint32(key, v) if v >= 0 else w.add_int32(key, v)
    elif isinstance(v, float):
        w.add_float32(key, v)
    elif isinstance(v, str):
        w.add_string(key, v)
    elif isinstance(v, (list, tuple)):
        items = list(v)
        if key.endswith("token_type"):
            w.add_array(key, [int(x) for x in items])  # int32 in llama.cpp's files
        elif items and isinstance(items[0], float) or key.endswith("scores"):
            w.add_key_value(key, [float(x) for x in items], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
        else:
            w.add_array(key, items)
    else:
        raise TypeError(f"cannot write metadata {key} of type {type(v).__name__}")


# --- the public entry ------------------------------------------------------------------------------------

def save_gguf(model, tokenizer, path, type: str = "f16", *, overwrite: bool = False, model_type: str | None = None,
              progress: Callable[[int, int, str], None] | None = None, name: str | None = None) -> WriteSummary:
    """Write `model` (any lmzoo model of a family in EXPORTS) as a GGUF file llama.cpp reads.

    tokenizer: an lmzoo Tokenizer (lmzoo.tokenizer.load_tokenizer), a .gguf path whose vocabulary is
    copied, or None (the model's own GGUF's vocabulary when it was loaded from one; else none written —
    llama.cpp then cannot tokenise). type: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | q4_k_m |
    q5_k_m | q6_k. model_type: the HF model_type to write as (default: the checkpoint's).
    name: general.name (default: the config's; llama.cpp keys a few token-attribute fixes on it, e.g.
    "phi3" expects Phi-3's special tokens). Returns a summary (path, tensor count per type, bytes)."""
    from torch import nn

    from lmzoo.nn.lora import lora_layers

    if lora_layers(model):
        raise ConfigError("the model has LoRA layers; merge them first (lmzoo merge / lmzoo.nn.lora.merge_lora)")
    for n, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Embedding)) and hasattr(m, "dequantize"):
            raise ConfigError(f"{n} holds quantised weights; load the model with keep_quantized=False to export it")
    layout = getattr(model, "checkpoint_layout", None)
    model_type = model_type or (layout.model_type if layout else None)
    if model_type is None:
        raise ConfigError(f"this model was not loaded from a checkpoint; pass model_type= (one of "
                          f"{', '.join(sorted(EXPORTS))})")
    if tokenizer is None and layout is not None and layout.from_gguf:
        tokenizer = layout.path
    state = model.state_dict()
    shapes = [(k, torch.empty(v.shape, device="meta")) for k, v in state.items()]
    return write_gguf(path, model.config, model_type, lambda: state.items(), shapes, tokenizer=tokenizer,
                      type=type, overwrite=overwrite, progress=progress, name=name)
