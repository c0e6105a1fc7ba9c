"""The one state-dict builder every checkpoint format shares (HF directories and GGUF files).

The model is built on the meta device (no memory), each canonical tensor is assembled from the
checkpoint's tensors as it is needed (concatenating fused pieces, applying the adapter's transforms),
checked for shape, cast to the target dtype/device and assigned. Every checkpoint tensor must be
used and every parameter filled.

Weight maps name checkpoint tensors by templates: '{i}' is the layer index, '{e}' the expert index.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch
from torch import nn

from lmzoo.checkpoints.checkpoint import split_index
from lmzoo.config import ModelConfig
from lmzoo.errors import CheckpointError
from lmzoo.nn.transformer import Transformer


def empty_model(cfg: ModelConfig) -> Transformer:
    """The model on the meta device (no memory), without running weight initialisers: every tensor
    is replaced from the checkpoint, and the initialisers' meta kernels (torch._refs) import
    torch._dynamo, about a second of start-up."""
    saved = [(cls, cls.reset_parameters) for cls in (nn.Linear, nn.Embedding, nn.LayerNorm)]
    try:
        for cls, _ in saved:
            cls.reset_parameters = lambda self: None
        with torch.device("meta"):
            return Transformer(cfg)
    finally:
        for cls, fn in saved:
            cls.reset_parameters = fn


class Source(Protocol):
    def keys(self) -> list[str]: ...
    def get(self, name: str) -> torch.Tensor: ...


_INDEX = re.compile(r"(?<=\.)(\d+)(?=\.)")
_PLACEHOLDERS = ("{i}", "{e}")  # layer, then expert


def name_template(name: str) -> tuple[str, dict[str, str]]:
    """'layers.3.mlp.experts.5.down.weight' -> ('layers.{i}.mlp.experts.{e}.down.weight',
    {'{i}': '3', '{e}': '5'})."""
    values: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        key = _PLACEHOLDERS[len(values)]
        values[key] = m.group(1)
        return key

    return _INDEX.sub(sub, name, count=len(_PLACEHOLDERS)), values


def fill_template(template: str, values: dict[str, str]) -> str:
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
        template, index = name_template(name)
        if template not in weights:
            missing.append(f"{name} (no mapping)")
            continue
        parts = [fill_template(p, index) for p in weights[template]]
        absent = [p for p in parts if split_index(p)[0] not in available]
        if absent:
            missing.extend(absent)
            continue
        tensors = [source.get(p) for p in parts]
        t = assemble(name, parts, tensors, param.shape, (transforms or {}).get(template), cfg,
                     param.is_floating_point())
        state[name] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        used.update(split_index(p)[0] for p in parts)
    if missing:
        raise CheckpointError(
            f"checkpoint is missing {len(missing)} tensor(s) the config needs, e.g. {missing[:3]}"
        )
    check_all_used(available, used, ignore, cfg, weights)
    return state


def shape_mismatch(name: str, parts: list[str], shapes: list[tuple], got: tuple | None, need) -> CheckpointError:
    pieces = " + ".join(f"{p} {tuple(x)}" for p, x in zip(parts, shapes))
    gives = "" if got is None else f" gives {tuple(got)},"
    return CheckpointError(f"shape mismatch: {pieces}{gives} but the config needs {tuple(need)} for {name}; "
                           "the config and the weights disagree")


def assemble(name: str, parts: list[str], tensors: list[torch.Tensor], need, transform, cfg,
             need_float: bool = True) -> torch.Tensor:
    """The pieces of one parameter stacked along rows (fused qkv, gate+up), transformed, shape-checked."""
    bad = [(q, x.dtype) for q, x in zip(parts, tensors) if not x.is_floating_point()]
    if bad and need_float:
        raise CheckpointError(f"{bad[0][0]} holds {str(bad[0][1]).removeprefix('torch.')} values, but {name} is a "
                              "floating-point parameter; expected a float tensor (quantised codes need their format)")
    if len({tuple(x.shape[1:]) for x in tensors}) > 1:  # pieces that cannot even be stacked
        raise shape_mismatch(name, parts, [x.shape for x in tensors], None, need)
    t = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
    if transform is not None:
        try:
            t = transform(t, cfg)
        except (RuntimeError, ValueError) as e:  # a layout change that the pieces' shapes do not allow
            raise CheckpointError(f"{' + '.join(parts)} {tuple(t.shape)} cannot be rearranged into {name} "
                                  f"{tuple(need)} ({e}); the config and the weights disagree") from None
    if tuple(t.shape) != tuple(need):
        raise shape_mismatch(name, parts, [x.shape for x in tensors], t.shape, need)
    return t


def check_all_used(available: set[str], used: set[str], ignore: tuple[str, ...], cfg: ModelConfig,
                   weights: dict[str, tuple[str, ...]]) -> None:
    """Every tensor of the checkpoint is part of the model: an unused one means the config describes
    another model than the weights (a layer count one short would silently drop a layer)."""
    extra = sorted(
        n for n in available - used if not any(n.endswith(s) or n.startswith(s) for s in ignore)
    )
    if cfg.tie_embeddings:  # a tied head stored anyway is fine when it equals the embedding
        head = [n for n in extra if weights.get("lm_head.weight") and n in weights["lm_head.weight"]]
        extra = [n for n in extra if n not in head]
    if extra:
        raise CheckpointError(
            f"checkpoint has {len(extra)} tensor(s) the config does not use, e.g. {extra[:3]}; "
            "the config and the weights disagree"
        )


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
    model = empty_model(cfg)
    state = build_state_dict(model, source, weights, ignore=ignore, transforms=transforms, dtype=dtype,
                             device=device)
    model.load_state_dict(state, strict=not cfg.tie_embeddings, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.reset_buffers(device=device)
    return model.eval()


