"""GGUF files (llama.cpp's format) -> lmzoo.

lmzoo.checkpoints.gguf_file reads the container and memory-maps the tensors; the `gguf` package dequantises
its block types (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, ...) to float32; tensors are read one at a time, so
peak memory is about one float copy of the weights.
GGUF stores each tensor's dims innermost-first (ne[0] = columns); reversed, that is PyTorch's
(out_features, in_features) layout.

llama.cpp's converter permutes the rows of W_q and W_k of `llama` models so that its rotary kernel
can rotate *adjacent* pairs (GPT-J style); we rotate halves (GPT-NeoX style), so the permutation is
undone here. Per head, the converter maps row r = i*2 + j  (i < hd/2, j in {0, 1}) from j*hd/2 + i:

    HF rows of one head:    [x0 x1 ... x(hd/2-1) | y0 y1 ... y(hd/2-1)]      (halves)
    GGUF rows of one head:  [x0 y0 x1 y1 ...]                                 (pairs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmzoo.checkpoints.gguf_file import GGUFFile
from lmzoo.checkpoints.permute import pairs_to_halves
from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import CheckpointError, UnsupportedModelError

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")

B = "blk.{i}."
GGUF_WEIGHTS: dict[str, tuple[str, ...]] = {
    "embed.weight": ("token_embd.weight",),
    "norm.weight": ("output_norm.weight",),
    "lm_head.weight": ("output.weight",),
    "layers.{i}.attn_norm.weight": (B + "attn_norm.weight",),
    "layers.{i}.mlp_norm.weight": (B + "ffn_norm.weight",),
    "layers.{i}.attn.qkv.weight": (B + "attn_q.weight", B + "attn_k.weight", B + "attn_v.weight"),
    "layers.{i}.attn.qkv.bias": (B + "attn_q.bias", B + "attn_k.bias", B + "attn_v.bias"),
    "layers.{i}.attn.o.weight": (B + "attn_output.weight",),
    "layers.{i}.attn.q_norm.weight": (B + "attn_q_norm.weight",),
    "layers.{i}.attn.k_norm.weight": (B + "attn_k_norm.weight",),
    "layers.{i}.mlp.gate_up.weight": (B + "ffn_gate.weight", B + "ffn_up.weight"),
    "layers.{i}.mlp.down.weight": (B + "ffn_down.weight",),
}


@dataclass(frozen=True)
class GGUFArch:
    """What differs between the GGUF architectures we read (all LLaMA-shaped)."""

    permuted_qk: bool  # llama.cpp permuted W_q/W_k rows (its `llama` converter does; qwen2/3 do not)
    qkv_bias: bool = False
    qk_norm: bool = False


ARCHES = {
    "llama": GGUFArch(permuted_qk=True),
    "qwen2": GGUFArch(permuted_qk=False, qkv_bias=True),
    "qwen3": GGUFArch(permuted_qk=False, qk_norm=True),
}


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's pairwise row order (see module docstring). w: (n_head*hd, ...)."""
    return pairs_to_halves(w, heads=n_head)


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.metadata.get(key, default)


def gguf_metadata(path) -> dict[str, Any]:
    """All key/value metadata of a GGUF file (token lists included)."""
    return GGUFFile(path).metadata


def gguf_config(reader: GGUFFile, path: Path) -> tuple[ModelConfig, GGUFArch]:
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

    n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(_field(reader, a + "attention.key_length", n_embd // n_head))
    rope_dim = int(_field(reader, a + "rope.dimension_count", head_dim))
    names = set(reader.tensors)
    if "rope_freqs.weight" in names:
        raise UnsupportedModelError(
            f"{path.name} carries per-frequency RoPE factors (rope_freqs, Llama 3.1 style); not supported yet"
        )
    scaling = RopeScaling()
    kind = _field(reader, a + "rope.scaling.type")
    if kind in ("linear", "yarn"):
        factor = float(_field(reader, a + "rope.scaling.factor", 1.0))
        orig = _field(reader, a + "rope.scaling.original_context_length")
        scaling = RopeScaling(kind=kind, factor=factor, original_max_position=int(orig) if orig else None)
    elif kind not in (None, "none"):
        raise UnsupportedModelError(f"{path.name}: GGUF rope scaling {kind!r} is not supported")
    emb = reader.tensors.get("token_embd.weight")
    if emb is None:
        raise CheckpointError(f"{path.name} has no token_embd.weight tensor")
    vocab = int(_field(reader, a + "vocab_size", 0) or emb.shape[0])
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    cfg = ModelConfig(
        name=str(_field(reader, "general.name", path.stem)),
        vocab_size=vocab,
        n_layer=int(need("block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_kv_head=int(_field(reader, a + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        intermediate_size=int(need("feed_forward_length")),
        max_seq_len=int(_field(reader, a + "context_length", 2048)),
        norm_eps=float(_field(reader, a + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(_field(reader, a + "rope.freq_base", 10000.0)),
        rotary_percentage=rope_dim / head_dim,
        rope_scaling=scaling,
        qkv_bias=arch.qkv_bias,
        qk_norm=arch.qk_norm,
        tie_embeddings="output.weight" not in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )
    return cfg, arch


class GGUFSource:
    """name -> float32 tensor, dequantised on demand (and Q/K rows restored for `llama`)."""

    def __init__(self, reader: GGUFFile, cfg: ModelConfig, arch: GGUFArch) -> None:
        self._file, self._cfg, self._arch = reader, cfg, arch

    def keys(self) -> list[str]:
        return list(self._file.tensors)

    def get(self, name: str) -> torch.Tensor:
        t = self._file.tensors[name]
        if t.type_name not in SUPPORTED_TYPES:
            raise UnsupportedModelError(
                f"{self._file.path.name}: tensor {name} has type {t.type_name}; "
                f"supported: {', '.join(SUPPORTED_TYPES)}"
            )
        try:
            w = torch.from_numpy(self._file.array(t))
        except Exception as e:
            raise CheckpointError(f"{self._file.path.name}: cannot decode tensor {name} ({e})") from None
        if self._arch.permuted_qk and name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_qk(w, self._cfg.n_head)
        elif self._arch.permuted_qk and name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_qk(w, self._cfg.n_kv_head)
        return w


def load_gguf(path, *, dtype: torch.dtype = torch.float32, device="cpu", keep_quantized: bool = False):
    """keep_quantized: block-quantised weight matrices become int8/int4 layers (lmzoo.quant.layers)
    holding the file's own codes and scales — same function, a fraction of the memory."""
    from lmzoo.checkpoints.build import instantiate

    path = Path(path)
    reader = GGUFFile(path)
    cfg, arch = gguf_config(reader, path)
    source = GGUFSource(reader, cfg, arch)
    if keep_quantized and dtype == torch.float32:
        model = _load_quantized(reader, cfg, arch, source, device)
    else:
        model = instantiate(cfg, source, GGUF_WEIGHTS, dtype=dtype, device=device)
    from lmzoo.checkpoints.peft import CheckpointLayout

    # q/k rows are un-permuted at load: the model is in the HF layout of the same architecture
    model.checkpoint_layout = CheckpointLayout(_field(reader, "general.architecture"), {}, str(path))
    return model


# layer attribute -> GGUF tensors stacked along rows
_LINEARS = {
    ("attn", "qkv"): ("attn_q", "attn_k", "attn_v"),
    ("attn", "o"): ("attn_output",),
    ("mlp", "gate_up"): ("ffn_gate", "ffn_up"),
    ("mlp", "down"): ("ffn_down",),
}


def _load_quantized(f: GGUFFile, cfg: ModelConfig, arch: GGUFArch, source: GGUFSource, device):
    from torch import nn

    from lmzoo.checkpoints.build import empty_model
    from lmzoo.checkpoints.gguf_quant import QUANTISED, RowConcat, quantised_linear

    def row_order(name: str, n_rows: int):
        heads = {"attn_q": cfg.n_head, "attn_k": cfg.n_kv_head}.get(name.split(".")[-2])
        if not arch.permuted_qk or heads is None:
            return None
        return unpermute_qk(torch.arange(n_rows), heads).numpy()

    def build(names: list[str]):
        ts = [f.tensors.get(n) for n in names]
        if any(t is None or t.type_name not in QUANTISED for t in ts):
            return None  # float tensors (or missing ones) take the ordinary path
        mod = quantised_linear(f, ts, [row_order(n, t.shape[0]) for n, t in zip(names, ts)])
        biases = [n.replace(".weight", ".bias") for n in names]
        if all(b in f.tensors for b in biases):
            parts = mod.parts if isinstance(mod, RowConcat) else [mod]
            vals = [source.get(b) for b in biases]
            if len(parts) == 1:
                vals = [torch.cat(vals)]
            for part, v in zip(parts, vals):
                part.bias = nn.Parameter(v)
        return mod

    model = empty_model(cfg)
    for i, layer in enumerate(model.layers):
        for (parent, child), stems in _LINEARS.items():
            mod = build([f"blk.{i}.{s}.weight" for s in stems])
            if mod is not None:
                setattr(getattr(layer, parent), child, mod)
    head = build(["output.weight" if "output.weight" in f.tensors else "token_embd.weight"])
    if head is not None:
        model.lm_head = head  # a tied head gets its own quantised copy; the embedding stays float
    # everything still on the meta device (embedding, norms, float linears) loads as floats
    from lmzoo.checkpoints.build import fill_template, name_template

    state = {}
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if not p.is_meta or name.startswith("rope."):
            continue
        template, index = name_template(name)
        parts = [fill_template(q, index) for q in GGUF_WEIGHTS[template]]
        missing = [q for q in parts if q not in f.tensors]
        if missing:
            raise CheckpointError(f"{f.path.name} is missing tensor(s) {missing}")
        ts = [source.get(q) for q in parts]
        state[name] = torch.cat(ts) if len(ts) > 1 else ts[0]
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings and head is None:
        model.lm_head.weight = model.embed.weight
    model.reset_buffers(device="cpu")
    model.quantization = "gguf"
    return model.to(device).eval()
