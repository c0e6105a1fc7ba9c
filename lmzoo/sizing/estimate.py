"""Sizing from the architecture alone: parameter counts, and memory for inference / training / LoRA /
QLoRA at a precision, a context length and a batch size.

Everything here is arithmetic on a ModelConfig (given as one, as a dict of its fields, or as a
catalog name), never an instantiated model, so it works for a 671B MoE as fast as for a toy. It reads
the config's own derived sizes and per-layer rules (head_dim, layer_is_moe, layer_window, rope_dim),
so there is no second copy of that logic here.
tests/sizing/test_estimate.py checks the counts against `sum(p.numel())` of our Transformer built on the meta
device, exactly, and against the reference implementations' own counts.

Parameter components (`ParamCount.breakdown`):
    embeddings  token table (+ learned position tables, embedding norm, projections in/out)
    attention   q/k/v/o projections and their biases, q/k norms, MLA's low-rank projections and norms
    mlp         dense MLPs, MoE routers, shared experts (and their gates)
    experts     routed MoE experts (all of them; `active` keeps n_experts_per_tok per MoE layer)
    norms       per-block norms and the final norm
    head        the LM head (0 when tied to the token embedding)

Memory model (`estimate_memory`), per term — bytes, with their sources:
    weights     params x bytes(dtype). int8 / int4 are lmzoo.quant.layers's weight-only layouts: every
                Linear (and the head) stores int8 values or packed int4 pairs plus float32 scales
                (+ float32 minimums for int4) per group of `quant_group_size` inputs (int8 default:
                one group per row; int4: 32); embeddings stay in the compute dtype, biases in fp32.
                QLoRA: NF4 with double quantisation, 4 + 8/64 + 32/(64*256) = 4.127 bits per weight
                (Dettmers et al. 2023, "QLoRA", sec. 2); embedding and head stay 16-bit.
    kv_cache    2 (K and V) x layers x batch x tokens x kv_heads x head_dim x bytes — the *real* kv
                head count, so GQA/MQA shrink it (Ainslie et al. 2023). Sliding-window layers keep
                only `window` tokens (Mistral's rolling buffer, Jiang et al. 2023). MLA caches one
                latent of kv_lora_rank + qk_rope_head_dim per token and layer (DeepSeek-V2,
                arXiv 2405.04434, sec. 2.1) — `mla_cache="expanded"` gives the per-head k/v that
                lmzoo.nn.mla caches today.
    activations inference: the largest set of tensors alive at once inside one block during a
                prefill of batch x context tokens (they are freed layer by layer), plus the
                last-position logits. Training: the tensors autograd saves for backward, counted
                per op the way Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
                Transformer Models", sec. 4.1) count them (their GPT layer: 34·s·b·h bytes + the
                5·a·s²·b score terms), re-derived for this block: gated/plain MLP, GQA, fused qkv
                whose output stays alive through v, flash attention (no s² scores; `attention=
                "eager"` adds them), RMSNorm saving its input and normalised copy. Activation
                checkpointing keeps each block's input plus one block's activations (Chen et al.
                2016; Korthikanti's "full recomputation"). Loss: logits and their float32
                log-softmax; backward starts with two float32 logits-sized gradients, the head's
                weight gradient and one block's gradient temporaries.
    gradients   full fine-tune: one gradient per weight, in the weights' dtype.
    optimizer   AdamW in mixed precision: fp32 master weights + two fp32 moments = 12 bytes per
                trained parameter (Rajbhandari et al. 2020, "ZeRO", sec. 3.1: 2 + 2 + 12 = 16 B/param
                with 16-bit weights and gradients); fp32 training keeps no master copy (8 B/param).
                Plus the step's temporaries, by implementation (`adam_impl`): fused (none), foreach
                (torch's CUDA default materialises sqrt(v): 4 B/param), loop (one tensor at a time).
    lora        LoRA adapters (Hu et al. 2021): rank x (in + out) per adapted matrix, held in fp32
                with fp32 gradients and AdamW moments (16 B/param); the base stays frozen.
    overhead    GPU only: the CUDA context, kernels and cuBLAS workspace (`runtime_overhead`,
                default 0.5 GiB; measure yours as nvidia-smi's figure after torch.cuda.init()).

Training peak: activations are freed as backward produces gradients, so the peak is
weights + optimizer + max(activations + loss buffers, gradients + optimizer-step temporaries) —
not the sum of every term (`MemoryEstimate.total` is that peak; `sum_of_terms` is the sum).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError

GiB = 1024**3

# --------------------------------------------------------------------------------------------------
# architecture dicts
# --------------------------------------------------------------------------------------------------


# Catalog names are resolved by the catalog, a higher layer, which registers its lookup here when
# imported (lmzoo.catalog): sizing stays importable on its own and never imports upwards.
_CATALOG_LOOKUP: Callable[[str], Mapping[str, Any]] | None = None


def register_catalog(lookup: Callable[[str], Mapping[str, Any]]) -> None:
    global _CATALOG_LOOKUP
    _CATALOG_LOOKUP = lookup


def catalog_arch(name: str) -> Mapping[str, Any]:
    if _CATALOG_LOOKUP is None:
        raise ConfigError(f"{name!r}: catalog names need lmzoo.catalog (import lmzoo or lmzoo.catalog)")
    return _CATALOG_LOOKUP(name)


def resolve_arch(x: Any) -> ModelConfig:
    """The ModelConfig of a ModelConfig, an architecture dict (ModelConfig field names) or a catalog
    name. Everything below reads the config itself (its derived sizes and per-layer rules), so the
    estimates cannot drift from the model they describe."""
    if isinstance(x, ModelConfig):
        return x
    if isinstance(x, str):
        x = catalog_arch(x)
    if not isinstance(x, Mapping):
        raise ConfigError(f"expected a ModelConfig, an architecture dict or a catalog name, got {type(x).__name__}")
    for k in ("vocab_size", "n_layer", "n_embd", "n_head", "intermediate_size"):
        if not isinstance(x.get(k), int) or x[k] <= 0:
            raise ConfigError(f"architecture needs a positive integer {k}, got {x.get(k)!r}")
    return ModelConfig.from_dict(dict(x))


def _norm(kind: str, dim: int) -> int:
    return 2 * dim if kind == "layernorm" else dim  # LayerNorm: weight + bias; RMSNorm: weight


def _has_qk_norm(a: ModelConfig, i: int) -> bool:
    return a.qk_norm and (a.qk_norm_layers is None or i in a.qk_norm_layers)


# --------------------------------------------------------------------------------------------------
# inventory: every weight matrix and vector of the network, by role
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """`count` identical tensors of shape (out_f, in_f) (a matrix: a Linear/Embedding weight) or
    (out_f,) (a vector: bias or norm weight, in_f = 0)."""

    component: str  # embeddings | attention | mlp | experts | norms | head
    role: str  # embed, pos, q, k, v, o, gate, up, down, router, norm, bias, ...
    out_f: int
    in_f: int = 0
    count: int = 1
    linear: bool = False  # a Linear weight (what quantisation and LoRA act on)

    @property
    def numel(self) -> int:
        return self.out_f * max(self.in_f, 1) * self.count


def _linear(comp: str, role: str, i: int, o: int, bias: bool, n: int = 1) -> Iterator[Tensor]:
    yield Tensor(comp, role, o, i, n, linear=True)
    if bias:
        yield Tensor(comp, "bias", o, 0, n)


def _mlp(a: ModelConfig, comp: str, width: int, n: int) -> Iterator[Tensor]:
    d, bias = a.n_embd, bool(a.mlp_bias)
    if a.mlp in ("swiglu", "geglu"):  # gate and up (stored fused as gate_up in lmzoo)
        yield from _linear(comp, "gate", d, width, bias, n)
        yield from _linear(comp, "up", d, width, bias, n)
    else:
        yield from _linear(comp, "up", d, width, bias, n)
    yield from _linear(comp, "down", width, d, bias, n)


def _attention(a: ModelConfig, i: int) -> Iterator[Tensor]:
    d, H = a.n_embd, a.n_head
    qkv_b, o_b = bool(a.qkv_bias), bool(a.attn_out_bias)
    if a.attention == "mla":
        nope, rope, v, rank = a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim, a.kv_lora_rank
        if a.q_lora_rank:
            yield from _linear("attention", "q_a", d, a.q_lora_rank, qkv_b)
            yield Tensor("attention", "norm", a.q_lora_rank)
            yield from _linear("attention", "q_b", a.q_lora_rank, H * (nope + rope), False)
        else:
            yield from _linear("attention", "q", d, H * (nope + rope), False)
        yield from _linear("attention", "kv_a", d, rank + rope, qkv_b)
        yield Tensor("attention", "norm", rank)
        yield from _linear("attention", "kv_b", rank, H * (nope + v), False)
        yield from _linear("attention", "o", H * v, d, o_b)
        return
    hd, kv = a.head_dim, a.n_kv_head
    yield from _linear("attention", "q", d, H * hd, qkv_b)
    yield from _linear("attention", "k", d, kv * hd, qkv_b)
    yield from _linear("attention", "v", d, kv * hd, qkv_b)
    yield from _linear("attention", "o", H * hd, d, o_b)
    if _has_qk_norm(a, i):
        kind = a.qk_norm_kind
        if kind == "rmsnorm":  # one RMSNorm(head_dim) each for q and k, shared by all heads
            yield Tensor("attention", "norm", 2 * hd)
        elif kind == "layernorm_per_head":  # bias-free, one weight vector per head
            yield Tensor("attention", "norm", (H + kv) * hd)
        # "l2": weightless


def _block_norms(a: ModelConfig) -> int:
    n = 1 if a.shared_norm else 2  # attention norm (+ MLP norm unless one norm feeds both)
    if a.sandwich_norm:  # Grok-1: another norm after each sublayer
        n *= 2
    return n


def inventory(x: Any) -> list[Tensor]:
    """Every parameter tensor of the architecture (tied head counted once), grouped by role."""
    a = resolve_arch(x)
    d, V, L = a.n_embd, a.vocab_size, a.n_layer
    e = a.embed_dim or d
    out: list[Tensor] = [Tensor("embeddings", "embed", V, e)]
    if a.position == "learned":
        out.append(Tensor("embeddings", "pos", a.max_seq_len + (a.position_offset or 0), d))
    if a.query_layer:  # PanGu-alpha: learned query positions for its top layer
        out.append(Tensor("embeddings", "pos", a.max_seq_len, d))
    if e != d:
        out += [Tensor("embeddings", "project_in", d, e, linear=True), Tensor("embeddings", "project_out", e, d, linear=True)]
    if a.embed_norm:
        out.append(Tensor("embeddings", "norm", _norm(a.norm, d)))
    # blocks: group identical layers so a 61-layer model is a handful of rows
    groups: dict[tuple, int] = {}
    for i in range(L):
        key = (a.layer_is_moe(i), _has_qk_norm(a, i))
        groups[key] = groups.get(key, 0) + 1
    for (moe, qkn), n in groups.items():
        i = next(j for j in range(L) if (a.layer_is_moe(j), _has_qk_norm(a, j)) == (moe, qkn))
        for t in _attention(a, i):
            out.append(dataclasses.replace(t, count=t.count * n))
        out.append(Tensor("norms", "norm", _norm(a.norm, d) * _block_norms(a), 0, n))
        if moe:
            E = a.n_experts
            out += list(_linear("mlp", "router", d, E, False, n))
            out += list(_mlp(a, "experts", a.moe_intermediate_size, n * E))
            if a.shared_expert_size:
                out += list(_mlp(a, "mlp", a.shared_expert_size, n))
                if a.shared_expert_gate:
                    out += list(_linear("mlp", "shared_gate", d, 1, False, n))
        else:
            out += list(_mlp(a, "mlp", a.intermediate_size, n))
    if a.final_norm:
        out.append(Tensor("norms", "norm", _norm(a.norm, d)))
    if not a.tie_embeddings:
        out.append(Tensor("head", "head", V, e, linear=True))
    if a.lm_head_bias:
        out.append(Tensor("head", "bias", V))
    return out


# --------------------------------------------------------------------------------------------------
# parameter counts
# --------------------------------------------------------------------------------------------------


@dataclass
class ParamCount:
    total: int
    active: int  # parameters one token uses (MoE: n_experts_per_tok routed experts per MoE layer)
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def non_embedding(self) -> int:
        return self.total - self.breakdown.get("embeddings", 0)


def count_params(x: Any) -> ParamCount:
    """Exact parameter count of a ModelConfig, an architecture dict or a catalog name."""
    if isinstance(x, str):
        x = catalog_arch(x)
    a = resolve_arch(x)
    breakdown = {"embeddings": 0, "attention": 0, "mlp": 0, "experts": 0, "norms": 0, "head": 0}
    for t in inventory(a):
        breakdown[t.component] += t.numel
    total = sum(breakdown.values())
    inactive = 0
    if a.n_experts:
        E, k = a.n_experts, a.n_experts_per_tok
        n_moe = sum(a.layer_is_moe(i) for i in range(a.n_layer))
        per_expert = breakdown["experts"] // (E * n_moe) if n_moe else 0
        inactive = n_moe * (E - k) * per_expert
    return ParamCount(total=total, active=total - inactive, breakdown=breakdown)


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------

TASKS = ("infer", "train", "lora", "qlora")
DTYPES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
                  "q8": "int8", "q4": "int4", "nf4": "int4"}
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # QLoRA: NF4 + double-quantised block scales


def normalize_dtype(dtype: str) -> str:
    d = _DTYPE_ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if d not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return d


@dataclass
class MemoryEstimate:
    total: int  # bytes at the peak
    breakdown: dict[str, int]  # named terms in bytes
    task: str
    dtype: str
    context: int
    batch: int
    params: int
    notes: list[str] = field(default_factory=list)

    @property
    def sum_of_terms(self) -> int:
        return sum(self.breakdown.values())

    @property
    def total_gib(self) -> float:
        return self.total / GiB

    def to_dict(self) -> dict[str, Any]:
        return {"total_bytes": self.total, "total_gib": round(self.total_gib, 3), "task": self.task,
                "dtype": self.dtype, "context": self.context, "batch": self.batch, "params": self.params,
                "breakdown_bytes": dict(self.breakdown), "notes": list(self.notes)}


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return v


def _weights_bytes(inv: list[Tensor], dtype: str, compute_bytes: float, *, group: int | None, tied: bool,
                   vocab: int, embed: int) -> float:
    """Weight storage: float dtypes plainly; int8/int4 as lmzoo.quant.layers stores them."""
    if dtype in ("fp32", "fp16", "bf16"):
        return sum(t.numel for t in inv) * DTYPES[dtype]
    total = 0.0
    for t in inv:
        if t.linear and t.component != "embeddings":
            g = t.in_f if group is None else group
            groups = t.out_f * math.ceil(t.in_f / g) * t.count
            total += t.numel * DTYPES[dtype] + groups * 4 * (2 if dtype == "int4" else 1)  # fp32 scale (+ min)
        elif t.role == "bias":
            total += t.numel * 4  # quantised layers keep float32 biases
        else:
            total += t.numel * compute_bytes
    if tied:  # quantize() converts the head Linear too; a tied head becomes its own quantised copy
        g = embed if group is None else group
        total += vocab * embed * DTYPES[dtype] + vocab * math.ceil(embed / g) * 4 * (2 if dtype == "int4" else 1)
    return total


def _kv_cache_bytes(a: ModelConfig, context: int, batch: int, kv_bytes: float, mla_cache: str) -> float:
    per_token_layers = 0.0
    for i in range(a.n_layer):
        window = a.layer_window(i)
        t = min(context, window) if window else context
        if a.attention == "mla":
            width = (a.kv_lora_rank + a.qk_rope_head_dim) if mla_cache == "latent" \
                else a.n_head * (a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim)
        else:
            width = 2 * a.n_kv_head * a.head_dim  # K and V
        per_token_layers += t * width
    return batch * per_token_layers * kv_bytes


def _ffn_width(a: ModelConfig, layer: int) -> int:
    """Hidden MLP width one token goes through in `layer`: MoE layers count the k routed experts it
    visits plus the shared expert."""
    if a.layer_is_moe(layer):
        return a.moe_intermediate_size * a.n_experts_per_tok + (a.shared_expert_size or 0)
    return a.intermediate_size


def _attn_widths(a: ModelConfig) -> tuple[int, int, int, int]:
    """(qkv projection output, rotated q + k copies, attention output, per-token widths) of one block.
    MLA: q, the expanded k (nope | shared rope) and kv_b's output (k_nope | v) per head."""
    H, hd = a.n_head, a.head_dim
    if a.attention == "mla":
        qk, v = hd, a.v_head_dim
        proj = H * qk + H * (a.qk_nope_head_dim + v)  # q and kv_b outputs (v is a view of kv_b's)
        return proj, 2 * H * qk, H * v, H * v
    q, kv = H * hd, a.n_kv_head * hd
    return q + 2 * kv, q + kv, q, q


def _infer_activation_elems(a: ModelConfig) -> int:
    """Largest number of elements alive per token inside one block during a forward without grad, as
    lmzoo's Block runs it: the block input (still held by the caller), the normed input, then either
    the attention phase (projection output, RoPE temporaries of q, rotated q, attention output, o
    output) or the MLP phase (attention output, mid residual, MLP norm output, gate_up output,
    activation, product; then the down output)."""
    d = a.n_embd
    proj, rot, out, _ = _attn_widths(a)
    q = a.n_head * a.head_dim
    attn = 2 * d + proj + max(3.5 * q, rot + out + d)
    gated = a.mlp in ("swiglu", "geglu")
    mlp = 0
    for i in range(a.n_layer):
        w = _ffn_width(a, i)
        m = max(5 * d + 4 * w, 6 * d + 3 * w) if gated else 5 * d + max(2 * w, w + d)
        if a.layer_is_moe(i):
            m += 2 * d + a.n_experts  # gathered expert inputs, accumulated output, router scores
        mlp = max(mlp, m)
    return int(max(attn, mlp))


def _train_layer_elems(a: ModelConfig, layer: int, *, task: str, lora_targets: str, attention: str = "flash") -> int:
    """Elements autograd saves per token for one block of lmzoo's Transformer (see the module
    docstring; tests/test_estimate.py checks this against the tensors autograd actually saves).
    Frozen Linears (LoRA / QLoRA) need no saved input unless an adapter reads it."""
    d, H = a.n_embd, a.n_head
    full = task == "train"
    adapt_attn = full or lora_targets in ("all", "attention")
    adapt_mlp = full or lora_targets == "all"
    n_norms = 1 if a.shared_norm else 2
    # RMSNorm saves its input and 1/rms, and the normalised copy when its weight trains; LayerNorm its
    # input, mean and 1/std
    norm_saved = (2 * d + 1 if full else d + 1) if a.norm == "rmsnorm" else d + 2
    elems = n_norms * norm_saved
    proj, rot, out, o_in = _attn_widths(a)
    if a.attention == "mla":  # low-rank inputs and their RMSNorms (input + normalised copy)
        rank, qr = a.kv_lora_rank, a.q_lora_rank or 0
        elems += (d if adapt_attn else 0) + 3 * qr + 3 * rank
    else:
        elems += d if adapt_attn else 0  # fused qkv input
        if not a.layer_uses_rope(layer):  # q and k stay views of the projection output
            rot = 0
    # SDPA saves q, k, v, its output and a logsumexp per head; v is a view of the projection output,
    # which stays alive whole. Flash kernels return the output laid out (B, T, H, hd), so the o
    # projection's input is a view of it; the eager path's output needs a transposed copy.
    elems += proj + rot + out + H
    if attention == "eager" and adapt_attn:
        elems += o_in
    w = _ffn_width(a, layer)
    elems += d if adapt_mlp else 0  # gate_up input
    if a.mlp in ("swiglu", "geglu"):  # act(gate) keeps the whole fused gate_up output alive; mul saves act
        elems += 3 * w
    else:  # the activation's input
        elems += w
    elems += w if adapt_mlp else 0  # down input (the product / activation output)
    if a.layer_is_moe(layer):  # per routed token: gathered input, expert output, weighted output (+ ids, weight);
        k = a.n_experts_per_tok  # router probabilities; a gated shared expert's output
        elems += 3 * k * d + 3 * k + a.n_experts
        if a.shared_expert_size and a.shared_expert_gate:
            elems += d + 2
    return elems


def estimate_memory(
    name_or_cfg: Any,
    *,
    task: str = "infer",
    dtype: str = "bf16",
    context: int | None = None,
    batch: int = 1,
    activation_checkpointing: bool = False,
    lora_rank: int = 16,
    lora_targets: str = "all",
    attention: str = "flash",
    mla_cache: str = "latent",
    quant_group_size: int | None = None,
    compute_dtype: str | None = None,
    adam_impl: str | None = None,
    device: str = "gpu",
    runtime_overhead: float = 0.5 * GiB,
) -> MemoryEstimate:
    """Peak memory of one device holding the whole model for `task` (see the module docstring).

    task: infer | train (full fine-tune, AdamW mixed precision) | lora | qlora
    dtype: fp32 | bf16 | fp16 | int8 | int4 — the weight storage; activations and KV cache use the
           compute dtype (fp32 for fp32, else 16-bit). For qlora the weights are NF4 regardless.
    context: tokens per sequence (prompt + generated); default: the model's context length.
    compute_dtype: activations / KV cache / unquantised tables; default fp32 for fp32 weights, else bf16.
    adam_impl: AdamW's step temporaries: "fused" (torch fused=True, DeepSpeed FusedAdam: none),
            "foreach" (torch's CUDA default: sqrt(v) for every parameter at once, 4 B/param),
            "loop" (torch's CPU default: one parameter at a time). Default: fused on GPU, loop on CPU.
    device: "gpu" adds the runtime overhead; "cpu" does not.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    dtype = normalize_dtype(dtype)
    if attention not in ("flash", "eager"):
        raise ConfigError(f"attention must be 'flash' or 'eager', got {attention!r}")
    if mla_cache not in ("latent", "expanded"):
        raise ConfigError(f"mla_cache must be 'latent' or 'expanded', got {mla_cache!r}")
    if lora_targets not in ("all", "attention"):
        raise ConfigError(f"lora_targets must be 'all' or 'attention', got {lora_targets!r}")
    if device not in ("gpu", "cpu"):
        raise ConfigError(f"device must be 'gpu' or 'cpu', got {device!r}")
    adam_impl = adam_impl or ("fused" if device == "gpu" else "loop")
    if adam_impl not in ("fused", "foreach", "loop"):
        raise ConfigError(f"adam_impl must be 'fused', 'foreach' or 'loop', got {adam_impl!r}")
    if task == "train" and dtype in ("int8", "int4"):
        raise ConfigError(f"full fine-tuning needs float weights, got dtype={dtype}; use task='qlora' for "
                          "4-bit weights with LoRA adapters")
    a = resolve_arch(name_or_cfg)
    context = a.max_seq_len if context is None else context
    _positive_int("context", context)
    _positive_int("batch", batch)
    _positive_int("lora_rank", lora_rank)
    if quant_group_size is not None:
        _positive_int("quant_group_size", quant_group_size)
    inv = inventory(a)
    n_params = sum(t.numel for t in inv)
    if compute_dtype is None:
        compute = 4 if dtype == "fp32" else 2  # activations, KV cache, unquantised tables
    else:
        cd = normalize_dtype(compute_dtype)
        if cd in ("int8", "int4"):
            raise ConfigError(f"compute_dtype must be a float dtype, got {compute_dtype!r}")
        compute = DTYPES[cd]
    act_b = compute
    d, V = a.n_embd, a.vocab_size
    e = a.embed_dim or d
    tokens = batch * context
    terms: dict[str, float] = {}
    notes: list[str] = []

    # --- weights -------------------------------------------------------------------------------
    if task == "qlora":
        if dtype in ("int8", "int4", "fp32"):
            notes.append(f"qlora: weights are NF4; dtype={dtype} read as bf16 compute")
            dtype = "bf16"
        big = sum(t.numel for t in inv if t.linear and t.component != "embeddings" and t.role != "head")
        terms["weights"] = big * NF4_BITS / 8 + (n_params - big) * compute
    else:
        group = quant_group_size if quant_group_size is not None else (32 if dtype == "int4" else None)
        terms["weights"] = _weights_bytes(inv, dtype, compute, group=group, tied=bool(a.tie_embeddings),
                                          vocab=V, embed=e)

    # --- inference -----------------------------------------------------------------------------
    if task == "infer":
        terms["kv_cache"] = _kv_cache_bytes(a, context, batch, compute, mla_cache)
        act = tokens * _infer_activation_elems(a) * act_b + batch * V * 4  # + last-position logits
        if a.position == "rope":  # cos and sin tables (batch, tokens, rope_dim), kept for the whole forward
            rope_dim = a.rope_dim
            act += 2 * tokens * rope_dim * act_b
        if attention == "eager":  # scores and softmax probabilities, (B, H, T, T), one layer at a time
            act += 2 * batch * a.n_head * context * context * act_b
        terms["activations"] = act
        if dtype in ("int8", "int4"):  # a prefill dequantises one Linear at a time into the compute dtype
            # the head sees only the last position of each row (one token a sequence): on CPU our
            # int8/int4 kernels take it without dequantising, at any batch, and longer inputs dequantise
            # a tile of TILE values at a time (none at all on AVX-512 builds; the estimate keeps the tile)
            from lmzoo.quant.layers import TILE

            head_kernel = device == "cpu"
            biggest = max((t.out_f * t.in_f for t in inv if t.linear
                           and not (head_kernel and t.role == "head")), default=0)
            terms["dequant_buffer"] = (min(biggest, TILE) if device == "cpu" else biggest) * compute
        if device == "gpu":
            terms["overhead"] = runtime_overhead
        total = sum(terms.values())
        return MemoryEstimate(total=int(total), breakdown={k: int(v) for k, v in terms.items()}, task=task,
                              dtype=dtype, context=context, batch=batch, params=n_params, notes=notes)

    # --- training (full / LoRA / QLoRA) ----------------------------------------------------------
    L = a.n_layer
    per_layer = [_train_layer_elems(a, i, task=task, lora_targets=lora_targets, attention=attention)
                 for i in range(L)]
    if activation_checkpointing:  # keep each block's input; recompute one block at a time in backward
        layer_acts = tokens * (L * d + max(per_layer)) * act_b
    else:
        layer_acts = tokens * sum(per_layer) * act_b
    if attention == "eager":
        layer_acts += (1 if activation_checkpointing else L) * 2 * batch * a.n_head * context * context * act_b
    # top of the network: final norm input (+ normalised copy when trained) + head input; the logits
    # (kept by the caller, as HF's outputs.logits) and the float32 log-softmax that cross-entropy saves
    loss = tokens * ((3 if task == "train" else 2) * d * act_b + V * act_b + V * 4)
    terms["activations"] = layer_acts
    terms["loss"] = loss
    # backward starts with two float32 (tokens, vocab) gradients (of the log-probs and of the logits)
    # and one block's worth of gradient temporaries
    backward_tmp = tokens * V * 8 + tokens * _infer_activation_elems(a) * act_b

    if task == "train":
        wbytes = DTYPES[dtype]
        terms["gradients"] = n_params * wbytes
        terms["optimizer"] = n_params * (8 if dtype == "fp32" else 12)
        backward_tmp += V * e * wbytes  # the head's (or tied embedding's) gradient arrives first
        # AdamW's sqrt(v) temporary: foreach for every parameter at once, the loop one tensor at a time
        step_tmp = {"fused": 0, "foreach": n_params,
                    "loop": max(t.out_f * max(t.in_f, 1) for t in inv)}[adam_impl] * 4
    else:
        targets = {"q", "k", "v", "o", "q_a", "q_b", "kv_a", "kv_b"}
        if lora_targets == "all":
            targets |= {"gate", "up", "down"}
        lora = sum(lora_rank * (t.in_f + t.out_f) * t.count for t in inv
                   if t.linear and t.role in targets and t.component in ("attention", "mlp", "experts"))
        terms["lora"] = lora * 4  # fp32 adapter weights
        terms["gradients"] = lora * 4
        terms["optimizer"] = lora * 8
        step_tmp = lora * 4 if adam_impl == "foreach" else 0
        if task == "qlora":  # one Linear dequantised to 16-bit at a time
            biggest = max((t.out_f * t.in_f for t in inv if t.linear), default=0)
            terms["dequant_buffer"] = biggest * compute
    if device == "gpu":
        terms["overhead"] = runtime_overhead
    static = sum(v for k, v in terms.items() if k not in ("activations", "loss", "gradients"))
    backward_start = terms["activations"] + terms["loss"] + backward_tmp
    step = terms["gradients"] + step_tmp
    total = static + max(backward_start, step)
    notes.append("peak at the start of backward" if backward_start >= step else "peak at the optimizer step")
    return MemoryEstimate(total=int(total), breakdown={k: int(v) for k, v in terms.items()}, task=task, dtype=dtype,
                          context=context, batch=batch, params=n_params, notes=notes)


# --------------------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------------------


def parse_size(text: Any) -> float:
    """'24GB', '24', '80GiB', '1.5TB' -> bytes. GPU memory sizes are binary (a '24 GB' card holds
    24 GiB), so GB and GiB both mean 1024**3 here."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "GB"
    else:
        s = str(text).strip().upper().replace(" ", "")
        num = s.rstrip("BIKMGT")
        unit = s[len(num):] or "GB"
        try:
            value = float(num)
        except ValueError:
            raise ConfigError(f"cannot read memory size {text!r}; expected e.g. 24GB, 80GiB, 1.5TB") from None
    scale = {"": GiB, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
             "G": GiB, "GB": GiB, "GIB": GiB, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}.get(unit)
    if scale is None:
        raise ConfigError(f"unknown memory unit in {text!r}; expected B, KB, MB, GB or TB")
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"memory size must be > 0, got {text!r}")
    return value * scale


def gpus_needed(total_bytes: float, gpu: Any, *, overhead: float = 0.5 * GiB) -> int:
    """GPUs of `gpu` memory (bytes, or a size string like '24GB') needed to hold `total_bytes` when the
    model state is split evenly (tensor / pipeline parallel or ZeRO-3); each GPU pays its own
    `overhead` (CUDA context), which `total_bytes` from estimate_memory(device='gpu') includes once."""
    cap = parse_size(gpu) if isinstance(gpu, str) else float(gpu)
    if cap <= 0:
        raise ConfigError(f"GPU memory must be > 0, got {gpu!r}")
    if cap <= overhead:
        raise ConfigError(f"a GPU of {cap / GiB:.2f} GiB cannot even hold the {overhead / GiB:.2f} GiB runtime overhead")
    return max(1, math.ceil((total_bytes - overhead) / (cap - overhead)))


__all__ = ["ParamCount", "count_params", "inventory", "resolve_arch", "MemoryEstimate", "estimate_memory",
           "gpus_needed", "parse_size", "normalize_dtype", "TASKS", "DTYPES", "GiB"]

