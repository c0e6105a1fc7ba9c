"""Checkpoint -> checkpoint without building the model: `lmzoo convert`.

`open_lazy` reads a checkpoint's config and tensor map (HF directory or GGUF file) and hands out the
canonical lmzoo tensors one at a time — assembled from the checkpoint's tensors as the shared builder
(checkpoints.build) assembles them, but yielded instead of kept — so an export (GGUF or HF) holds about
one tensor at a time, plus the source's memory map, instead of the whole model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lmzoo.checkpoints.build import check_all_used, empty_model, fill_template, name_template
from lmzoo.checkpoints.checkpoint import split_index
from lmzoo.config import ModelConfig
from lmzoo.errors import CheckpointError, ModelNotFoundError, UnsupportedModelError


@dataclass
class LazyCheckpoint:
    cfg: ModelConfig
    model_type: str  # the HF model_type of the network (what gguf_save.EXPORTS is keyed by)
    shapes: list[tuple[str, torch.Tensor]]  # canonical names with meta tensors, in model order
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    path: Path
    is_gguf: bool
    hf_config: dict  # an HF source's config.json; a GGUF's config as the keys the HF weight maps read


def open_lazy(path) -> LazyCheckpoint:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"{p} does not exist; expected an HF checkpoint directory or a .gguf file")
    if p.is_file():
        return _gguf(p)
    return _hf(p)


def _gguf(p: Path) -> LazyCheckpoint:
    from lmzoo.checkpoints.gguf import (
        CONFIG_TENSORS,
        GGUF_TRANSFORMS,
        SUPPORTED_TYPES,
        GGUFSource,
        _field,
        _hf_view,
        gguf_config,
        gguf_weights,
    )
    from lmzoo.checkpoints.gguf_file import GGUFFile

    reader = GGUFFile(p)
    cfg, arch = gguf_config(reader, p)
    bad = sorted({t.type_name for t in reader.tensors.values()} - set(SUPPORTED_TYPES))
    if bad:
        raise UnsupportedModelError(f"{p.name} holds tensors of block type {', '.join(bad)}; supported: "
                                    f"{', '.join(SUPPORTED_TYPES)}")
    source = GGUFSource(reader, cfg, arch)
    weights = gguf_weights(reader.tensors)
    name = _field(reader, "general.architecture")
    model_type = (cfg.n_experts and arch.hf_moe_model_type) or arch.hf_model_type or name
    return _lazy(cfg, model_type, source, weights, {**GGUF_TRANSFORMS, **arch.transforms}, p, _hf_view(cfg),
                 is_gguf=True, ignore=CONFIG_TENSORS)


def _hf(p: Path) -> LazyCheckpoint:
    from lmzoo.checkpoints.checkpoint import open_checkpoint_dir
    from lmzoo.checkpoints.load import read_hf_config

    hf, adapter, cfg = read_hf_config(p)
    source = open_checkpoint_dir(p)
    weights = adapter.weights(hf) if callable(adapter.weights) else adapter.weights
    transforms = (adapter.transforms(hf) if callable(adapter.transforms) else adapter.transforms) or {}
    return _lazy(cfg, hf["model_type"], source, weights, transforms, p, hf, is_gguf=False, ignore=adapter.ignore)


def _lazy(cfg, model_type, source, weights, transforms, path: Path, hf_config: dict, *, is_gguf: bool,
          ignore=()) -> LazyCheckpoint:
    expected = dict(empty_model(cfg).state_dict())
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight", None)
    available, used = set(source.keys()), set()
    for name in expected:  # everything the model needs is there, and nothing else, before a byte is written
        template, index = name_template(name)
        if template not in weights:
            raise CheckpointError(f"{path.name}: no checkpoint tensor maps to {name}")
        parts = {split_index(fill_template(x, index))[0] for x in weights[template]}
        missing = sorted(parts - available)
        if missing:
            raise CheckpointError(f"{path.name} is missing tensor(s) {missing[:3]}")
        used |= parts
    check_all_used(available, used, ignore, cfg, weights)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for name, param in expected.items():
            template, index = name_template(name)
            parts = [fill_template(q, index) for q in weights[template]]
            ts = [source.get(q) for q in parts]
            t = ts[0] if len(ts) == 1 else torch.cat(ts, dim=0)
            if template in transforms:
                t = transforms[template](t, cfg)
            if tuple(t.shape) != tuple(param.shape):
                raise CheckpointError(f"{path.name}: {' + '.join(parts)} gives shape {tuple(t.shape)}, the config "
                                      f"needs {tuple(param.shape)} for {name}")
            yield name, t.float() if t.is_floating_point() else t

    return LazyCheckpoint(cfg, model_type, list(expected.items()), tensors, path, is_gguf, hf_config)


def convert_to_gguf(src, out, *, type: str = "f16", overwrite: bool = False, tokenizer=None, progress=None):
    """Stream the checkpoint at `src` into a GGUF file at `out` (see gguf_save.write_gguf). The
    vocabulary: `tokenizer` (an lmzoo Tokenizer or a .gguf path), else the source GGUF's."""
    from lmzoo.checkpoints.gguf_save import write_gguf

    lazy = open_lazy(src)
    if tokenizer is None and lazy.is_gguf:
        tokenizer = lazy.path
    return write_gguf(out, lazy.cfg, lazy.model_type, lazy.tensors, lazy.shapes, tokenizer=tokenizer, type=type,
                      overwrite=overwrite, progress=progress)


def convert_to_hf(src, out, *, dtype: torch.dtype | None = None, tokenizer=None, progress=None,
                  max_shard_bytes: int = 2 << 30):
    """Stream the checkpoint at `src` into an HF directory at `out` (see save.write_hf). dtype: default
    an HF source's own, float32 from GGUF. tokenizer: written as tokenizer.json when the source is a GGUF
    (an HF source's tokenizer files are copied). progress(bytes_done, bytes_total, name)."""
    from lmzoo.checkpoints.load import stored_dtype
    from lmzoo.checkpoints.save import write_hf
    from lmzoo.dtypes import resolve_dtype

    lazy = open_lazy(src)
    if dtype is None:
        dtype = torch.float32 if lazy.is_gguf else resolve_dtype(stored_dtype(lazy.hf_config))
    return write_hf(out, lazy.shapes, lazy.tensors, cfg=lazy.cfg, model_type=lazy.model_type,
                    hf_config=lazy.hf_config, from_gguf=lazy.is_gguf, dtype=dtype, tokenizer=tokenizer,
                    tokenizer_source=lazy.path, max_shard_bytes=max_shard_bytes, progress=progress)
