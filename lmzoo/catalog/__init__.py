"""The model catalog: every model the seeds name, as data (facts + sources + real hyperparameters).

    list_models(family=None, commercial=None) -> names
    get_entry(name) -> Entry               facts, license, sources, arch dict
    get_config(name) -> ModelConfig        the runnable configuration (clear error when lmzoo's
                                           Transformer lacks a feature the model needs)
    count_params(name | ModelConfig | arch dict) -> ParamCount(total, active, breakdown)
    to_model_config(entry) -> ModelConfig

Names match case-insensitively, ignoring '-', '_', '.', ' ' (so "llama2 7b" finds "Llama-2-7B"),
and also match an entry's aliases and Hugging Face id. Unknown names raise UnknownModelError with the
closest names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from lmzoo.catalog import (  # noqa: E402
    baichuan,
    bloom,
    cerebras,
    deepseek,
    derivatives,
    falcon,
    glm,
    gpt_neox,
    gptj,
    grok,
    llama,
    mistral,
    moss,
    opt,
    pangu,
    phi,
    qwen,
    stablelm,
    yi,
)
from lmzoo.catalog._entry import COMMERCIAL, EXTRA_ARCH_KEYS, Entry, License
from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError, UnknownModelError, UnsupportedModelError
from lmzoo.sizing.estimate import ParamCount, count_params, register_catalog

FAMILY_MODULES = (llama, derivatives, glm, bloom, baichuan, qwen, yi, deepseek, falcon, mistral, gpt_neox, gptj, opt,
                  cerebras, stablelm, moss, pangu, phi, grok)

ENTRIES: dict[str, Entry] = {}
for _m in FAMILY_MODULES:
    for _e in _m.ENTRIES:
        if _e.name in ENTRIES:
            raise RuntimeError(f"duplicate catalog entry {_e.name}")
        ENTRIES[_e.name] = _e


def _key(name: str) -> str:
    return re.sub(r"[\s_\-/]+", "", name.lower())


_INDEX: dict[str, str] = {}
for _e in ENTRIES.values():
    for _n in (_e.name, *_e.aliases, *([_e.hf_id, _e.hf_id.split("/")[-1]] if _e.hf_id else [])):
        _INDEX.setdefault(_key(_n), _e.name)


def families() -> list[str]:
    return sorted({e.family for e in ENTRIES.values()})


def suggest(name: str, n: int = 3) -> list[str]:
    """Closest catalog names to `name` (difflib ratio on normalised names, then substring hits)."""
    k = _key(name)
    keys = list(_INDEX)
    close = [_INDEX[m] for m in difflib.get_close_matches(k, keys, n=n * 3, cutoff=0.5)]
    if k:
        close += [_INDEX[x] for x in keys if k in x]
    seen: list[str] = []
    for c in close:
        if c not in seen:
            seen.append(c)
    return seen[:n]


def get_entry(name: str) -> Entry:
    if isinstance(name, Entry):
        return name
    hit = _INDEX.get(_key(str(name)))
    if hit is None:
        close = suggest(str(name))
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `lmzoo list`"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return ENTRIES[hit]


def list_models(family: str | None = None, commercial: str | bool | None = None) -> list[str]:
    """Catalog names, optionally of one family and/or by commercial use: True -> 'yes' or
    'conditional'; 'yes' / 'no' / 'conditional' -> exactly that."""
    if family is not None and family.lower() not in families():
        close = difflib.get_close_matches(family.lower(), families(), n=3, cutoff=0.4)
        raise UnknownModelError(f"unknown family {family!r}; families: {', '.join(families())}"
                                + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if isinstance(commercial, str) and commercial not in COMMERCIAL:
        raise ConfigError(f"commercial must be one of {COMMERCIAL} or a bool, got {commercial!r}")
    out = []
    for e in ENTRIES.values():
        if family is not None and e.family != family.lower():
            continue
        c = e.license.commercial
        if commercial is True and c == "no" or commercial is False and c != "no":
            continue
        if isinstance(commercial, str) and c != commercial:
            continue
        out.append(e.name)
    return out


_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def unsupported_features(entry: Entry | str) -> list[str]:
    """Why `to_model_config` would refuse the entry ([] when lmzoo can build it)."""
    e = get_entry(entry)
    reasons = [f"{EXTRA_ARCH_KEYS[k]} ({k}={v!r})" for k, v in e.arch.items() if k in EXTRA_ARCH_KEYS and v]
    unknown = sorted(k for k in e.arch if k not in _FIELDS and k not in EXTRA_ARCH_KEYS)
    reasons += [f"unknown architecture field {k!r}" for k in unknown]
    if not reasons:
        try:
            _build(e)
        except ConfigError as err:
            reasons.append(str(err))
    return reasons


def _build(e: Entry) -> ModelConfig:
    kw = {k: v for k, v in e.arch.items() if k in _FIELDS}
    return ModelConfig(name=e.name, **kw)


def to_model_config(entry: Entry | str) -> ModelConfig:
    e = get_entry(entry)
    reasons = unsupported_features(e)
    if reasons:
        raise UnsupportedModelError(f"{e.name} needs what lmzoo's Transformer does not have yet: {'; '.join(reasons)}")
    return _build(e)


def get_config(name: str) -> ModelConfig:
    return to_model_config(get_entry(name))


register_catalog(lambda name: get_entry(name).arch)  # lmzoo.count_params("Llama-2-7B") etc.


__all__ = ["Entry", "License", "ENTRIES", "list_models", "get_entry", "get_config", "to_model_config",
           "count_params", "ParamCount", "families", "suggest", "unsupported_features"]
