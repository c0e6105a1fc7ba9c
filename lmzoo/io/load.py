"""`from_pretrained`: build a Transformer from an HF checkpoint directory or a GGUF file.

The model is built on the meta device (no memory), each canonical tensor is assembled from the
checkpoint's tensors as it is needed (concatenating fused pieces), checked for shape, cast to the
target dtype/device and assigned. Every checkpoint tensor must be used and every parameter filled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

import torch

from lmzoo.config import ModelConfig
from lmzoo.errors import CheckpointError, ConfigError, ModelNotFoundError
from lmzoo.io.checkpoint import split_index
from lmzoo.nn.transformer import Transformer


class Source(Protocol):
    def keys(self) -> list[str]: ...
    def get(self, name: str) -> torch.Tensor: ...


_INDEX = re.compile(r"(?<=\.)(\d+)(?=\.)")
_PLACEHOLDERS = ("{i}", "{e}")  # layer, then expert


def _template(name: str) -> tuple[str, dict[str, str]]:
    """'layers.3.mlp.experts.5.down.weight' -> ('layers.{i}.mlp.experts.{e}.down.weight',
    {'{i}': '3', '{e}': '5'})."""
    values: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        key = _PLACEHOLDERS[len(values)]
        values[key] = m.group(1)
        return key

    return _INDEX.sub(sub, name, count=len(_PLACEHOLDERS)), values


def _fill(template: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        template = template.replace(k, v)
    return template


def build_state_dict(
    model: torch.nn.Module,
    source: Source,
    weights: dict[str, tuple[str, ...]],
    *,
    ignore: tuple[str, ...] = (),
    transforms: dict | None = None,
    dtype: torch.dtype,
    device: torch.device | str,
) -> dict[str, torch.Tensor]:
    """Map `source` tensors onto `model`'s parameter names; strict about missing, extra and shape.

    transforms: canonical template -> fn(tensor, cfg) applied after assembling (layout changes
    such as un-interleaving a per-head fused qkv)."""
    cfg: ModelConfig = model.config
    expected = dict(model.state_dict(keep_vars=True))
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    available = set(source.keys())
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for name, param in expected.items():
        template, index = _template(name)
        if template not in weights:
            missing.append(f"{name} (no mapping)")
            continue
        parts = [_fill(p, index) for p in weights[template]]
        absent = [p for p in parts if split_index(p)[0] not in available]
        if absent:
            missing.extend(absent)
            continue
        tensors = [source.get(p) for p in parts]
        t = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        if transforms and template in transforms:
            t = transforms[template](t, cfg)
        if tuple(t.shape) != tuple(param.shape):
            got = " + ".join(f"{p} {tuple(x.shape)}" for p, x in zip(parts, tensors))
            raise CheckpointError(
                f"shape mismatch: {got} gives {tuple(t.shape)}, but the config needs {tuple(param.shape)} "
                f"for {name}; the config and the weights disagree"
            )
        state[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        used.update(split_index(p)[0] for p in parts)
    if missing:
        raise CheckpointError(
            f"checkpoint is missing {len(missing)} tensor(s) the config needs, e.g. {missing[:3]}"
        )
    # a tied head stored anyway is fine when it equals the embedding
    extra = sorted(
        n for n in available - used if not any(n.endswith(s) or n.startswith(s) for s in ignore)
    )
    if cfg.tie_embeddings:
        head = [n for n in extra if weights.get("lm_head.weight") and n in weights["lm_head.weight"]]
        extra = [n for n in extra if n not in head]
    if extra:
        raise CheckpointError(
            f"checkpoint has {len(extra)} tensor(s) the config does not use, e.g. {extra[:3]}; "
            "the config and the weights disagree"
        )
    return state


def instantiate(
    cfg: ModelConfig,
    source: Source,
    weights: dict[str, tuple[str, ...]],
    *,
    ignore: tuple[str, ...] = (),
    transforms: dict | None = None,
    dtype: torch.dtype,
    device,
) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    state = build_state_dict(model, source, weights, ignore=ignore, transforms=transforms, dtype=dtype,
                             device=device)
    model.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.reset_buffers(device=device)
    return model.eval()


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}; expected one of float32, float16, bfloat16")


def from_pretrained(path, dtype=None, device=None, *, cpu_kernels: bool = True,
                    keep_quantized: bool = True, mla_cache: str | None = None) -> Transformer:
    """Load a model from an HF checkpoint directory or a `.gguf` file.

    dtype: None keeps the checkpoint's dtype (float32 for GGUF); device: None -> cpu.
    cpu_kernels: on CPU, route few-row fp32 products through lmzoo's GEMV kernel
    (lmzoo.accelerate; about 1.8x faster decode on 2 cores, same weights and results). The kernels
    only serve products autograd does not record: with gradients enabled and a parameter or input
    that requires them, the layers take F.linear, so a model loaded this way trains correctly.
    keep_quantized: GGUF only — block-quantised matrices stay int8/int4 (the file's own codes, so
    the same function as dequantising them) instead of being expanded to float.
    mla_cache: DeepSeek (MLA) models only — "latent" caches the compressed latent instead of per-head
    keys and values ("expanded", the default); see lmzoo.nn.mla.
    """
    model = _load(path, dtype, device, keep_quantized)
    if mla_cache is not None:  # the default form of the caches made for this model
        if model.config.attention != "mla":
            raise ConfigError(f"mla_cache applies to MLA models (DeepSeek-V2/V3); this model has "
                              f"attention={model.config.attention!r}")
        model.config = model.config.replace(mla_cache=mla_cache)  # validates the value
    if cpu_kernels and model.embed.weight.device.type == "cpu":
        from lmzoo.accelerate import use_cpu_kernels

        use_cpu_kernels(model)
    return model


def _load(path, dtype, device, keep_quantized: bool) -> Transformer:
    from lmzoo.io.checkpoint import open_checkpoint_dir
    from lmzoo.io.hf import get_adapter

    p = Path(path).expanduser()
    device = torch.device(device or "cpu")
    dtype = resolve_dtype(dtype)
    if not p.exists():
        raise ModelNotFoundError(f"model path {str(p)!r} does not exist; expected an HF checkpoint directory or a .gguf file")
    if p.is_file():
        if _is_gguf(p) or p.suffix.lower() == ".gguf":  # a .gguf with a bad magic is reported as corrupt
            from lmzoo.io.gguf import load_gguf

            return load_gguf(p, dtype=dtype or torch.float32, device=device, keep_quantized=keep_quantized)
        raise ModelNotFoundError(f"{p} is a file but not a GGUF file; expected a .gguf file or a checkpoint directory")
    cfg_path = p / "config.json"
    if not cfg_path.exists():
        raise ModelNotFoundError(f"{p} has no config.json; expected an HF checkpoint directory")
    try:
        hf = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from None
    adapter = get_adapter(hf.get("model_type"))
    cfg = adapter.config(hf)
    if dtype is None:
        dtype = resolve_dtype(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    source = open_checkpoint_dir(p)
    try:
        weights = adapter.weights(hf) if callable(adapter.weights) else adapter.weights
        transforms = adapter.transforms(hf) if callable(adapter.transforms) else adapter.transforms
        return instantiate(cfg, source, weights, ignore=adapter.ignore, transforms=transforms,
                           dtype=dtype, device=device)
    finally:
        source.close()


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"
