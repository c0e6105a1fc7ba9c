"""GGUF files (llama.cpp's format) -> lmzoo.

lmzoo.checkpoints.gguf_file reads the container and memory-maps the tensors; the `gguf` package dequantises
its block types (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...) to float32; tensors are read one at a time, so
peak memory is about one float copy of the weights.
GGUF stores each tensor's dims innermost-first (ne[0] = columns); reversed, that is PyTorch's
(out_features, in_features) layout.

One table of tensor names serves every architecture (`gguf_weights`): llama.cpp's converters write
the same names for the same roles (attn_qkv or attn_q/k/v, ffn_gate/ffn_up/ffn_down, the stacked
expert tensors ffn_*_exps, ...), with fused q|k|v already in q, k, v order. What differs between
architectures and is not in the file is a few switches per architecture (`ARCHES`); the rest of the
config comes from the metadata and from which tensors the file holds.

llama.cpp's converter permutes the rows of W_q and W_k of `llama` models so that its rotary kernel
can rotate *adjacent* pairs (GPT-J style); we rotate halves (GPT-NeoX style), so the permutation is
undone here (GPT-J's own weights are in pair order too). Per head, the converter maps row
r = i*2 + j  (i < hd/2, j in {0, 1}) from j*hd/2 + i:

    HF rows of one head:    [x0 x1 ... x(hd/2-1) | y0 y1 ... y(hd/2-1)]      (halves)
    GGUF rows of one head:  [x0 y0 x1 y1 ...]                                 (pairs)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmzoo.checkpoints.checkpoint import split_index
from lmzoo.checkpoints.gguf_file import GGUFFile
from lmzoo.checkpoints.permute import pairs_to_halves
from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import CheckpointError, LmzooError, UnsupportedModelError, resource_error

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q5_0", "Q5_1", "Q5_K", "Q3_K",
                   "Q2_K")

B = "blk.{i}."


@dataclass(frozen=True)
class GGUFArch:
    """What a GGUF file does not say about its architecture: the switches llama.cpp hard-codes per
    architecture. Everything else is read from the file — sizes from the metadata, and from which
    tensors it holds: biases, q/k norms, fused or split projections, gated MLP, tied head, an
    embedding norm or position table, which layers are MoE, a shared expert."""

    norm: str = "rmsnorm"
    # the original model's activation: exact GELU for GPT-NeoX and Falcon, whose files do not say so
    # (llama.cpp runs its tanh approximation there)
    mlp: str = "swiglu"
    position: str = "rope"
    # W_q/W_k rows rotate adjacent pairs: llama.cpp's `llama` converter permutes them so; GPT-J's
    # weights are so natively. Un-permuted here (the rope window of each head) to rotate halves
    rope_pairs: bool = False
    parallel_residual: bool = False  # when the file has no `{arch}.use_parallel_residual`
    moe_renormalize: bool = False  # top-k router weights renormalised (llama.cpp's norm_w)
    qk_norm_kind: str = "rmsnorm"
    attention: str = "standard"  # or "mla" (DeepSeek-V2/V3: the latent sizes come from the metadata)
    # lmzoo name -> fn(tensor, cfg): row permutations of whole canonical tensors (the HF adapters' own)
    transforms: dict[str, Callable] = field(default_factory=dict)
    # the HF model_type of the same network (whose names LoRA adapter files use); None: the GGUF name;
    # hf_moe_model_type: the one a file with expert tensors is (llama -> mixtral)
    hf_model_type: str | None = None
    hf_moe_model_type: str | None = None
    # fn(reader, "arch.", config) -> config fields llama.cpp hard-codes for the architecture (overrides)
    fields: Callable[[Any, str, ModelConfig], dict[str, Any]] | None = None


def _glm_transforms() -> dict[str, Callable]:
    # ChatGLM2/3 / GLM-4-9B: fused q|k|v whose q and k rotate adjacent pairs on the first half of each
    # head, as in THUDM's checkpoints (the converter leaves them so): the HF adapter's re-ordering
    from lmzoo.checkpoints.adapters.llama_like import GLM_TRANSFORMS

    return GLM_TRANSFORMS


def _deepseek_transforms() -> dict[str, Callable]:
    # DeepSeek's released weights rotate adjacent pairs, and llama.cpp keeps them so (its rope mode for
    # deepseek2 is the pairwise one): the HF adapter's re-ordering of the rope rows applies unchanged
    from lmzoo.checkpoints.adapters.moe import DEEPSEEK_TRANSFORMS

    return DEEPSEEK_TRANSFORMS


def _llama4_fields(reader, a: str, cfg: ModelConfig) -> dict[str, Any]:
    """Llama 4 as llama.cpp runs it (llama-model.cpp: none of this is in the file): every 4th layer
    NoPE with the query temperature (floor 8192, scale 0.1), the others RoPE with chunked attention
    (chunks of 8192) and a weightless L2 q/k norm — except in the 128-expert model (Maverick), which
    has none; a sigmoid router whose weight scales each expert's *input*, an ungated shared expert.
    A file with attention.sliding_window = 0 (MobileLLM-R1) has no chunking, and its NoPE step is the
    layer count, as llama.cpp has it."""
    n = cfg.n_layer
    no_chunks = _field(reader, a + "attention.sliding_window") == 0
    step = n if no_chunks else 4
    nope = tuple(i for i in range(n) if (i + 1) % step == 0)
    rope = tuple(i for i in range(n) if i not in nope)
    moe = dict(router="sigmoid", moe_scale_input=True, moe_renormalize=False, shared_expert_gate=False)
    return dict(nope_layers=nope or None, attention_chunk=None if no_chunks else 8192,
                chunked_layers=None if no_chunks else rope, sliding_window=None,
                qk_norm=cfg.n_experts != 128, qk_norm_kind="l2", qk_norm_layers=rope,
                attn_temperature_floor=8192, attn_temperature_scale=0.1, **(moe if cfg.n_experts else {}))


ARCHES = {
    # (Mixtral's GGUFs are `llama` with expert tensors; llama.cpp renormalises their top-k weights)
    "llama": GGUFArch(rope_pairs=True, moe_renormalize=True, hf_moe_model_type="mixtral"),
    # Baichuan-7B / Baichuan2-7B: the converter splits W_pack into attn_q/k/v with llama's row order
    # (Baichuan-13B's ALiBi variant is told apart only by its size in llama.cpp: not read here)
    "baichuan": GGUFArch(rope_pairs=True),
    # Qwen (v1): fused c_attn as attn_qkv; feed_forward_length counts both MLP halves (the width is
    # read from ffn_down); its dynamic NTK / log-n context extension is not in the file (llama.cpp
    # runs without it too)
    "qwen": GGUFArch(),
    "qwen2": GGUFArch(),
    "qwen3": GGUFArch(),
    "qwen2moe": GGUFArch(hf_model_type="qwen2_moe"),
    "qwen3moe": GGUFArch(moe_renormalize=True, hf_model_type="qwen3_moe"),
    "phi3": GGUFArch(),  # fused attn_qkv and ffn_up (= gate | up)
    "gptneox": GGUFArch(norm="layernorm", mlp="gelu", parallel_residual=True, hf_model_type="gpt_neox"),
    "falcon": GGUFArch(norm="layernorm", mlp="gelu", parallel_residual=True),
    "bloom": GGUFArch(norm="layernorm", mlp="gelu_tanh", position="alibi"),
    "stablelm": GGUFArch(norm="layernorm", qk_norm_kind="layernorm_per_head"),
    "gpt2": GGUFArch(norm="layernorm", mlp="gelu_tanh", position="learned"),
    "deepseek2": GGUFArch(attention="mla", transforms=_deepseek_transforms(), hf_model_type="deepseek_v2"),
    "chatglm": GGUFArch(transforms=_glm_transforms()),
    # GLM-4-0414: separate q/k/v in pair order, fused gate|up as ffn_up, sandwich norms
    "glm4": GGUFArch(rope_pairs=True),
    "gptj": GGUFArch(norm="layernorm", mlp="gelu_tanh", rope_pairs=True, parallel_residual=True),
    # Llama 4: q/k in Meta's pair order (the converter leaves them so); experts stacked as in Mixtral's
    "llama4": GGUFArch(rope_pairs=True, hf_model_type="llama4_text", fields=_llama4_fields),
}


def _stems(names) -> set[str]:
    """Per-layer tensor names without the layer: 'blk.3.attn_q.weight' -> 'attn_q.weight'."""
    return {n.split(".", 2)[2] for n in names if n.startswith("blk.") and n.count(".") >= 2}


def gguf_weights(names) -> dict[str, tuple[str, ...]]:
    """lmzoo name -> the GGUF tensors that make it (concatenated along rows), for a file holding
    `names`. llama.cpp's converters already store fused q|k|v (GPT-NeoX, BLOOM, Falcon, GPT-2, Phi-3)
    in q, k, v order and Linear weights as (out, in) (GPT-2's Conv1D transposed), so only the q/k
    pair order (GGUFArch.rope_pairs) and the stacked experts need work here."""
    stems = _stems(names)
    wb = ("weight", "bias")
    qkv = ("attn_qkv",) if "attn_qkv.weight" in stems else ("attn_q", "attn_k", "attn_v")
    gate_up = ("ffn_gate", "ffn_up") if "ffn_gate.weight" in stems else ("ffn_up",)  # phi3: ffn_up = gate|up
    # Falcon-40B (two norms, no ffn_norm): attn_norm_2 is ln_attn, the attention's, and attn_norm ln_mlp
    # (gguf-py's tensor_mapping; llama.cpp's falcon graph reads them so)
    falcon40 = "ffn_norm.weight" not in stems and "attn_norm_2.weight" in stems
    attn_norm, mlp_norm = ("attn_norm_2", "attn_norm") if falcon40 else ("attn_norm", "ffn_norm")
    w: dict[str, tuple[str, ...]] = {
        "embed.weight": ("token_embd.weight",),
        "pos_embed.weight": ("position_embd.weight",),
        "lm_head.weight": ("output.weight",),
        "lm_head.bias": ("output.bias",),
        "layers.{i}.post_attn_norm.weight": (B + "post_attention_norm.weight",),
        "layers.{i}.post_mlp_norm.weight": (B + "post_ffw_norm.weight",),
        "layers.{i}.attn.q_norm.weight": (B + "attn_q_norm.weight",),
        "layers.{i}.attn.k_norm.weight": (B + "attn_k_norm.weight",),
        "layers.{i}.mlp.router.weight": (B + "ffn_gate_inp.weight",),
        "layers.{i}.mlp.router_bias": (B + "exp_probs_b.bias",),
        # MLA (deepseek2): kv_b is stored split as attn_k_b (transposed) and attn_v_b by newer
        # converters; GGUFSource puts attn_kv_b back together
        "layers.{i}.attn.q.weight": (B + "attn_q.weight",),
        "layers.{i}.attn.q_a.weight": (B + "attn_q_a.weight",),
        "layers.{i}.attn.q_a_norm.weight": (B + "attn_q_a_norm.weight",),
        "layers.{i}.attn.q_b.weight": (B + "attn_q_b.weight",),
        "layers.{i}.attn.kv_a.weight": (B + "attn_kv_a_mqa.weight",),
        "layers.{i}.attn.kv_a_norm.weight": (B + "attn_kv_a_norm.weight",),
        "layers.{i}.attn.kv_b.weight": (B + "attn_kv_b.weight",),
        # experts stacked (n_expert, rows, cols) in one tensor each: expert e is slice [e]
        "layers.{i}.mlp.experts.{e}.gate_up.weight": (B + "ffn_gate_exps.weight[{e}]", B + "ffn_up_exps.weight[{e}]"),
        "layers.{i}.mlp.experts.{e}.down.weight": (B + "ffn_down_exps.weight[{e}]",),
        "layers.{i}.mlp.shared.gate_up.weight": (B + "ffn_gate_shexp.weight", B + "ffn_up_shexp.weight"),
        "layers.{i}.mlp.shared.down.weight": (B + "ffn_down_shexp.weight",),
        "layers.{i}.mlp.shared_gate.weight": (B + "ffn_gate_inp_shexp.weight",),
    }
    for p in wb:
        w |= {
            f"embed_norm.{p}": (f"token_embd_norm.{p}",),
            f"norm.{p}": (f"output_norm.{p}",),
            f"layers.{{i}}.attn_norm.{p}": (B + f"{attn_norm}.{p}",),
            f"layers.{{i}}.mlp_norm.{p}": (B + f"{mlp_norm}.{p}",),
            f"layers.{{i}}.attn.qkv.{p}": tuple(B + f"{t}.{p}" for t in qkv),
            f"layers.{{i}}.attn.o.{p}": (B + f"attn_output.{p}",),
            f"layers.{{i}}.mlp.gate_up.{p}": tuple(B + f"{t}.{p}" for t in gate_up),
            f"layers.{{i}}.mlp.down.{p}": (B + f"ffn_down.{p}",),
        }
    return w


def _flat(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return t.reshape(-1)  # StableLM's per-head q/k norms are stored (n_head, head_dim)


def _one_row(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    return t.reshape(1, -1)  # the shared expert's gate: a (1, d) Linear, 1-D in some files


GGUF_TRANSFORMS = {"layers.{i}.attn.q_norm.weight": _flat, "layers.{i}.attn.k_norm.weight": _flat,
                   "layers.{i}.mlp.shared_gate.weight": _one_row}


def unpermute_qk(w: torch.Tensor, n_head: int, rope_dim: int | None = None) -> torch.Tensor:
    """Undo llama.cpp's pairwise row order (see module docstring). w: (n_head*hd, ...)."""
    return pairs_to_halves(w, heads=n_head, rope_dim=rope_dim)


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.metadata.get(key, default)


def gguf_metadata(path) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (token lists included)."""
    return GGUFFile(path).metadata


def gguf_config(reader: GGUFFile, path: Path) -> tuple[ModelConfig, GGUFArch]:
    """The file's metadata -> (ModelConfig, architecture); any value of the wrong type, form or range
    (a string block count, a zero head count) is one CheckpointError line."""
    try:
        return _gguf_config(reader, path)
    except (TypeError, ValueError, AttributeError, ArithmeticError, IndexError, KeyError) as e:
        if isinstance(e, LmzooError):
            raise
        raise CheckpointError(f"{path.name}: GGUF metadata has a value of the wrong type, form or range "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def _gguf_config(reader: GGUFFile, path: Path) -> tuple[ModelConfig, GGUFArch]:
    arch_name = _field(reader, "general.architecture")
    if arch_name not in ARCHES:
        raise UnsupportedModelError(
            f"GGUF architecture {arch_name!r} is not supported; supported: {', '.join(sorted(ARCHES))}"
        )
    arch = ARCHES[arch_name]
    a = arch_name + "."

    def need(key: str):
        v = _field(reader, a + key)
        if v is None:
            raise CheckpointError(f"{path.name}: GGUF metadata lacks {a + key}")
        return v

    def count(key: str, default: Any = None) -> int:
        """A size field: a positive integer (a corrupt 0 or 4e9 is caught here, before any division
        or allocation sized by it)."""
        v = need(key) if default is None else _field(reader, a + key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**31:
            raise CheckpointError(f"{path.name}: GGUF metadata {a + key} = {v!r}; expected a positive integer")
        return v

    names = set(reader.tensors)
    stems = _stems(names)
    n_layer = count("block_count")
    blocks = {int(n.split(".")[1]) for n in names if re.match(r"blk\.\d+\.", n)}
    if blocks != set(range(n_layer)):
        held = f"blk.0 - blk.{max(blocks)} ({len(blocks)} blocks)" if blocks else "no blk.N tensors"
        raise CheckpointError(f"{path.name}: GGUF metadata {a}block_count = {n_layer} but the file holds {held}; "
                              "the metadata and the tensors disagree")
    n_embd, n_head = count("embedding_length"), count("attention.head_count")
    if n_embd % n_head and a + "attention.key_length" not in reader.metadata:
        raise CheckpointError(f"{path.name}: GGUF metadata {a}embedding_length = {n_embd} is not a multiple of "
                              f"{a}attention.head_count = {n_head}, and no {a}attention.key_length is given")
    head_dim = count("attention.key_length", n_embd // n_head)
    rope_dim = int(_field(reader, a + "rope.dimension_count", head_dim))
    max_seq = int(_field(reader, a + "context_length", 2048))
    scaling = _rope_scaling(reader, path, a, max_seq, rope_dim)
    emb = reader.tensors.get("token_embd.weight")
    if emb is None:
        raise CheckpointError(f"{path.name} has no token_embd.weight tensor")
    vocab = int(_field(reader, a + "vocab_size", 0) or emb.shape[0])
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    eps_key = "attention.layer_norm_rms_epsilon" if arch.norm == "rmsnorm" else "attention.layer_norm_epsilon"
    # a single norm per block means both branches read it: a parallel block (GPT-J, Falcon-7B, StableLM-2-12B)
    shared_norm = not stems & {"ffn_norm.weight", "attn_norm_2.weight"}
    moe = _moe_fields(reader, path, a, n_layer)
    mla = _mla_fields(reader, a, need, rope_dim, scaling) if arch.attention == "mla" else {}
    scaling = mla.pop("rope_scaling", scaling)
    window = _field(reader, a + "attention.sliding_window")
    cfg = ModelConfig(
        name=str(_field(reader, "general.name", path.stem)),
        vocab_size=vocab,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=count("attention.head_count_kv", n_head),
        head_dim=head_dim,
        intermediate_size=_mlp_width(reader, a, moe, need),
        max_seq_len=max_seq,
        norm=arch.norm,
        norm_eps=float(_field(reader, a + eps_key, 1e-5)),
        mlp=arch.mlp,
        position="learned" if "position_embd.weight" in names else arch.position,
        rope_theta=float(_field(reader, a + "rope.freq_base", 10000.0)),
        rotary_percentage=1.0 if mla else rope_dim / head_dim,
        rope_scaling=scaling,
        sliding_window=int(window) if window else None,
        qkv_bias=bool(stems & {"attn_qkv.bias", "attn_q.bias"}),
        attn_out_bias="attn_output.bias" in stems,
        mlp_bias="ffn_down.bias" in stems,
        qk_norm="attn_q_norm.weight" in stems,
        qk_norm_kind=arch.qk_norm_kind,
        sandwich_norm="post_attention_norm.weight" in stems,
        parallel_residual=shared_norm or bool(_field(reader, a + "use_parallel_residual", arch.parallel_residual)),
        shared_norm=shared_norm,
        embed_norm="token_embd_norm.weight" in names,
        tie_embeddings="output.weight" not in names,
        lm_head_bias="output.bias" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        **moe,
        **mla,
        moe_renormalize=bool(_field(reader, a + "expert_weights_norm", arch.moe_renormalize)),
    )
    if arch.fields is not None:
        cfg = cfg.replace(**arch.fields(reader, a, cfg))
    return cfg, arch


def _mla_fields(reader: GGUFFile, a: str, need, rope_dim: int, scaling: RopeScaling) -> dict[str, Any]:
    """DeepSeek's multi-head latent attention. Newer files describe it in llama.cpp's absorbed (MQA)
    form — key_length = kv_lora_rank + rope dims, with the per-head sizes in key_length_mla /
    value_length_mla; older ones give the per-head sizes in key_length / value_length."""
    qk = int(_field(reader, a + "attention.key_length_mla") or need("attention.key_length"))
    v = int(_field(reader, a + "attention.value_length_mla") or need("attention.value_length"))
    q_rank = _field(reader, a + "attention.q_lora_rank")
    scale = qk ** -0.5
    log_mul = _field(reader, a + "rope.scaling.yarn_log_multiplier")
    if scaling.kind == "yarn" and log_mul:
        import dataclasses
        import math

        # DeepSeek's YaRN: the temperature 0.1 * mscale_all_dim * ln(factor) + 1 goes on the softmax
        # (squared); cos/sin keep mscale / mscale_all_dim = 1 (llama.cpp assumes the two are equal,
        # as in every released config)
        m = 1.0 + float(log_mul) * math.log(scaling.factor) if scaling.factor > 1 else 1.0
        scale *= m * m
        scaling = dataclasses.replace(scaling, attention_factor=1.0)
    return dict(rope_scaling=scaling, attention="mla", q_lora_rank=int(q_rank) if q_rank else None,
                kv_lora_rank=int(need("attention.kv_lora_rank")), qk_nope_head_dim=qk - rope_dim,
                qk_rope_head_dim=rope_dim, v_head_dim=v, attn_scale=scale)


def _mlp_width(reader: GGUFFile, a: str, moe: dict, need) -> int:
    """The dense MLP's width: ffn_down's input width where a layer has one (the metadata's
    feed_forward_length is not always that: Qwen v1 counts both halves), else the metadata."""
    down = next((t for n, t in reader.tensors.items() if n.startswith("blk.") and n.endswith(".ffn_down.weight")), None)
    if down is not None:
        return int(down.ne[0])
    return int(_field(reader, a + "feed_forward_length", 0) or moe.get("moe_intermediate_size")
               or need("feed_forward_length"))


def _rope_scaling(reader: GGUFFile, path: Path, a: str, max_seq: int, rope_dim: int) -> RopeScaling:
    kind = _field(reader, a + "rope.scaling.type")
    orig = _field(reader, a + "rope.scaling.original_context_length")
    if "rope_freqs.weight" in reader.tensors:
        # Llama 3.1+: the converter stores the llama3 rule's outcome, one divisor per frequency, used
        # at every length: a LongRoPE table with the same factors short and long and no attention factor
        f = tuple(float(x) for x in reader.array(reader.tensors["rope_freqs.weight"]).reshape(-1))
        if len(f) != rope_dim // 2:
            raise CheckpointError(f"{path.name}: rope_freqs has {len(f)} factors; RoPE has {rope_dim // 2} frequencies")
        return RopeScaling(kind="longrope", factor=1.0, original_max_position=max_seq, short_factor=f,
                           long_factor=f, attention_factor=1.0)
    if "rope_factors_long.weight" in reader.tensors:  # Phi-3's LongRoPE: per-frequency divisors
        if not orig:
            raise CheckpointError(f"{path.name}: GGUF metadata lacks {a}rope.scaling.original_context_length "
                                  "(needed with rope_factors_long)")
        short, long = (tuple(float(x) for x in reader.array(reader.tensors[f"rope_factors_{k}.weight"]).reshape(-1))
                       for k in ("short", "long"))
        attn = _field(reader, a + "rope.scaling.attn_factor")
        return RopeScaling(kind="longrope", factor=max_seq / int(orig), original_max_position=int(orig),
                           short_factor=short, long_factor=long,
                           attention_factor=None if attn is None else float(attn))
    if kind in ("linear", "yarn"):
        factor = float(_field(reader, a + "rope.scaling.factor", 1.0))
        return RopeScaling(kind=kind, factor=factor, original_max_position=int(orig) if orig else None)
    if kind not in (None, "none"):
        raise UnsupportedModelError(f"{path.name}: GGUF rope scaling {kind!r} is not supported")
    return RopeScaling()


def _moe_fields(reader: GGUFFile, path: Path, a: str, n_layer: int) -> dict[str, Any]:
    """Mixture-of-experts switches: the layers holding a router (ffn_gate_inp) are the MoE layers."""
    layers = tuple(i for i in range(n_layer) if f"blk.{i}.ffn_gate_inp.weight" in reader.tensors)
    if not layers:
        return {}

    def need(key: str):
        v = _field(reader, a + key)
        if v is None:
            raise CheckpointError(f"{path.name}: GGUF metadata lacks {a + key} (the file has expert tensors)")
        return int(v)

    t = reader.tensors.get(f"blk.{layers[0]}.ffn_gate_exps.weight")
    width = _field(reader, a + "expert_feed_forward_length") or (t.shape[1] if t is not None else None)
    if width is None:
        raise CheckpointError(f"{path.name}: GGUF metadata lacks {a}expert_feed_forward_length")
    shexp = reader.tensors.get(f"blk.{layers[0]}.ffn_gate_shexp.weight")
    shared = _field(reader, a + "expert_shared_feed_forward_length") or (shexp.shape[0] if shexp is not None else 0)
    sigmoid = _field(reader, a + "expert_gating_func") == 2  # llama.cpp: 1 softmax, 2 sigmoid
    return dict(
        router="sigmoid" if sigmoid else "softmax", router_group_score="top2" if sigmoid else "max",
        router_bias=f"blk.{layers[0]}.exp_probs_b.bias" in reader.tensors,
        router_groups=int(_field(reader, a + "expert_group_count", 0) or 1),
        router_topk_groups=int(_field(reader, a + "expert_group_used_count", 0) or 1),
        routed_scaling=float(_field(reader, a + "expert_weights_scale", 1.0)),
        n_experts=need("expert_count"), n_experts_per_tok=need("expert_used_count"),
        moe_intermediate_size=int(width), moe_layers=None if len(layers) == n_layer else layers,
        shared_expert_size=int(shared),
        shared_expert_gate=f"blk.{layers[0]}.ffn_gate_inp_shexp.weight" in reader.tensors,
    )


def _row_order(name: str, n_rows: int, cfg: ModelConfig, arch: GGUFArch):
    """Source row of each row of tensor `name` in lmzoo's layout, or None when they agree."""
    heads = {"attn_q": cfg.n_head, "attn_k": cfg.n_kv_head}.get(name.split(".")[-2])
    # rows that disagree with the config keep their order: the shape check then names both
    if not arch.rope_pairs or heads is None or n_rows != heads * cfg.head_dim:
        return None
    return unpermute_qk(torch.arange(n_rows), heads, cfg.rope_dim)


class GGUFSource:
    """name -> float32 tensor, dequantised on demand; 'name[e]' is slice e of a stacked (expert)
    tensor; q/k rows restored to halves order where the architecture stores pairs."""

    def __init__(self, reader: GGUFFile, cfg: ModelConfig, arch: GGUFArch) -> None:
        self._file, self._cfg, self._arch = reader, cfg, arch
        # the stacked tensors decoded last: a layer's gate, up and down experts are read in turn,
        # expert by expert, so all three stay until the next layer's arrive
        self._stacked: dict[str, torch.Tensor] = {}

    def keys(self) -> list[str]:
        names = list(self._file.tensors)
        split = {n for n in names if n.endswith((".attn_k_b.weight", ".attn_v_b.weight"))}
        joined = {n.replace(".attn_k_b.", ".attn_kv_b.") for n in split if n.endswith(".attn_k_b.weight")}
        return [n for n in names if n not in split] + sorted(joined - set(names))

    def get(self, name: str) -> torch.Tensor:
        if name.endswith(".attn_kv_b.weight") and name not in self._file.tensors:
            return self._kv_b(name)
        base, index = split_index(name)
        if index is not None:
            if base not in self._stacked:
                if len(self._stacked) >= 3:
                    self._stacked.pop(next(iter(self._stacked)))
                self._stacked[base] = self._decode(base)
            return self._stacked[base][index]
        w = self._decode(name)
        order = _row_order(name, w.shape[0], self._cfg, self._arch)
        return w if order is None else w[order]

    def _kv_b(self, name: str) -> torch.Tensor:
        """MLA's kv_b from llama.cpp's split form: per head, k_b (kv_lora_rank, nope) transposed, then
        v_b (v, kv_lora_rank) -> rows [nope of k | v] per head, (n_head * (nope + v), kv_lora_rank)."""
        k_b = self._decode(name.replace(".attn_kv_b.", ".attn_k_b."))  # (n_head, rank, nope)
        v_b = self._decode(name.replace(".attn_kv_b.", ".attn_v_b."))  # (n_head, v, rank)
        kv = torch.cat([k_b.transpose(1, 2), v_b], dim=1)
        return kv.reshape(-1, kv.shape[-1]).contiguous()

    def _decode(self, name: str) -> torch.Tensor:
        t = self._file.tensors[name]
        if t.type_name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(
                f"{self._file.path.name}: tensor {name} has type {t.type_name}; "
                f"supported: {', '.join(SUPPORTED_TYPES)}"
            )
        try:
            return torch.from_numpy(self._file.array(t))
        except Exception as e:
            raise resource_error(e) or CheckpointError(f"{self._file.path.name}: cannot decode tensor {name} ({e})") from None


# tensors read into the config, not the weights
CONFIG_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight", "rope_freqs.weight")


def load_gguf(path, *, dtype: torch.dtype = torch.float32, device="cpu", keep_quantized: bool = False):
    """keep_quantized: block-quantised weight matrices become int8/int4 layers (lmzoo.quant.layers)
    holding the file's own codes and scales, F16 / BF16 ones half-precision layers holding the file's
    values — same function, a fraction of the memory."""
    from lmzoo.checkpoints.build import instantiate

    path = Path(path)
    reader = GGUFFile(path)
    cfg, arch = gguf_config(reader, path)
    source = GGUFSource(reader, cfg, arch)
    weights = gguf_weights(reader.tensors)
    if keep_quantized and dtype == torch.float32:
        model = _load_quantized(reader, cfg, arch, source, weights, device)
    else:
        model = instantiate(cfg, source, weights, ignore=CONFIG_TENSORS,
                            transforms={**GGUF_TRANSFORMS, **arch.transforms}, dtype=dtype, device=device)
    from lmzoo.checkpoints.peft import CheckpointLayout

    # q/k rows are un-permuted at load: the model is in the HF layout of the same architecture
    name = _field(reader, "general.architecture")
    hf_type = (cfg.n_experts and arch.hf_moe_model_type) or arch.hf_model_type or name
    model.checkpoint_layout = CheckpointLayout(hf_type, _hf_view(cfg), str(path), from_gguf=True)
    return model


def _hf_view(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json keys the HF adapters' weight maps read (LoRA files name HF tensors), from the config."""
    return {
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,  # StableLM's per-head norms
        "q_lora_rank": cfg.q_lora_rank, "attention_bias": cfg.qkv_bias,  # DeepSeek
        # Falcon: one norm (7B) or ln_attn + ln_mlp (40B / 180B, the new decoder architecture)
        "new_decoder_architecture": not cfg.shared_norm, "parallel_attn": cfg.parallel_residual,
        "num_ln_in_parallel_attn": 1 if cfg.shared_norm else 2,
        "ffn_hidden_size": cfg.intermediate_size,  # chatglm: ChatGLM2/3 / GLM-4's layout, not ChatGLM-6B's
    }


def _load_quantized(f: GGUFFile, cfg: ModelConfig, arch: GGUFArch, source: GGUFSource,
                    weights: dict[str, tuple[str, ...]], device):
    """Every Linear whose GGUF tensors are all block-quantised or half-precision becomes a quantised
    layer or a HalfLinear (several tensors, or slices of a stacked expert tensor, stacked along rows);
    the rest loads as floats."""
    import numpy as np
    from torch import nn

    from lmzoo.checkpoints.build import assemble, check_all_used, empty_model, fill_template, name_template, shape_mismatch
    from lmzoo.checkpoints.gguf_quant import HALF, QUANTISED, RowConcat, quantised_linear
    from lmzoo.quant.layers import HalfLinear, Int4Linear, Int8Linear, QuantEmbedding

    def rows(name: str, t) -> np.ndarray | None:
        base, index = split_index(name)
        if index is not None:  # expert `index` of a stacked (n_expert, n, k) tensor: its n rows
            n = t.shape[1]
            return np.arange(index * n, (index + 1) * n)
        order = _row_order(base, t.shape[0], cfg, arch)
        return None if order is None else order.numpy()

    def build(names: list[str], template: str, name: str, need: nn.Linear):
        ts = [f.tensors.get(split_index(n)[0]) for n in names]
        if any(t is None or not (t.type_name in QUANTISED or t.type_name in HALF) for t in ts):
            return None  # float32 tensors (or missing, reassembled ones) take the ordinary path
        # (rows, cols) each piece gives: an expert's slice of a stacked (n_expert, n, k) tensor gives n rows
        shapes = [(t.shape[1] if split_index(n)[1] is not None else t.shape[0], t.ne[0]) for n, t in zip(names, ts)]
        if {c for _, c in shapes} != {need.in_features} or sum(r for r, _ in shapes) != need.out_features:
            raise shape_mismatch(name + ".weight", names, shapes, None, (need.out_features, need.in_features))
        used.update(split_index(n)[0] for n in names)
        orders = [rows(n, t) for n, t in zip(names, ts)]
        if template in arch.transforms:  # a row permutation of the whole tensor
            if len(ts) > 1 or orders[0] is not None:
                return None
            orders = [arch.transforms[template](torch.arange(ts[0].shape[0]), cfg).numpy()]
        mod = quantised_linear(f, ts, orders)
        biases = [n.replace(".weight", ".bias") for n in names]
        if all(b in f.tensors for b in biases):
            parts = mod.parts if isinstance(mod, RowConcat) else [mod]
            vals = [source.get(b) for b in biases]
            used.update(split_index(b)[0] for b in biases)
            bias_template = template.replace(".weight", ".bias")
            if len(parts) == 1:
                vals = [torch.cat(vals)]
                if bias_template in arch.transforms:
                    vals = [arch.transforms[bias_template](vals[0], cfg)]
            for part, v in zip(parts, vals):
                part.bias = nn.Parameter(v)
        return mod

    model = empty_model(cfg)
    # the checkpoint's names, taken while every weight is a meta tensor (a built layer's state_dict()
    # would copy its codes out of its tiles)
    persistent = set(model.state_dict())
    used: set[str] = set()
    heads = {"lm_head"}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        template, index = name_template(name + ".weight")
        if name in heads and cfg.tie_embeddings:
            parts = ["token_embd.weight"]  # a tied head gets its own quantised copy; the embedding stays float
        elif template in weights:
            parts = [fill_template(q, index) for q in weights[template]]
        else:
            continue
        mod = build(parts, template, name, module)
        if mod is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, mod)
    # the token table stays in its blocks as well (a lookup dequantises the rows it reads); a tied
    # head's layer is the table
    table = model.lm_head if cfg.tie_embeddings else None
    if table is None and "embed.weight" in weights and "embed.weight" not in arch.transforms:
        emb = model.embed
        table = build(list(weights["embed.weight"]), "embed.weight", "embed",
                      nn.Linear(emb.embedding_dim, emb.num_embeddings, bias=False, device="meta"))
    if type(table) in (Int4Linear, Int8Linear, HalfLinear):
        model.embed = QuantEmbedding(table)
    # everything still on the meta device (embedding, norms, float linears) loads as floats
    state = {}
    available = set(source.keys())
    transforms = {**GGUF_TRANSFORMS, **arch.transforms}  # buffers recomputed from the config (RoPE, ALiBi) are not loaded
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if not p.is_meta or name not in persistent or (name == "lm_head.weight" and cfg.tie_embeddings):
            continue
        template, index = name_template(name)
        if template not in weights:
            raise CheckpointError(f"{f.path.name}: no GGUF tensor maps to {name}")
        parts = [fill_template(q, index) for q in weights[template]]
        missing = [q for q in parts if split_index(q)[0] not in available]
        if missing:
            raise CheckpointError(f"{f.path.name} is missing tensor(s) {missing}")
        state[name] = assemble(name, parts, [source.get(q) for q in parts], p.shape, transforms.get(template), cfg,
                               p.is_floating_point())
        used.update(split_index(q)[0] for q in parts)
    check_all_used(available, used, CONFIG_TENSORS, cfg, weights)
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings and isinstance(model.lm_head, nn.Linear):
        model.lm_head.weight = model.embed.weight
    model.reset_buffers(device="cpu")
    model.quantization = "gguf"
    return model.to(device).eval()
