"""lmzoo: the mainstream open LLMs as configurations of one readable PyTorch Transformer.

The names below are the public surface. They load on first use (PEP 562), so `import lmzoo` and
commands that need no model (`lmzoo --help`, `lmzoo list`) do not import torch (~1.5 s)."""

from __future__ import annotations

import importlib

from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    GenerationError,
    LmzooError,
    ModelNotFoundError,
    TokenizerError,
    UnknownModelError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

# public name -> the module that defines it. Sizing names go through the catalog, which registers
# catalog-name lookup with sizing when imported (lmzoo.count_params("Llama-2-7B")).
_LAZY = {
    "get_config": "lmzoo.catalog", "get_entry": "lmzoo.catalog", "list_models": "lmzoo.catalog",
    "from_pretrained": "lmzoo.checkpoints.load",
    "save_gguf": "lmzoo.checkpoints.save",
    "Transformer": "lmzoo.nn.transformer",
    **{n: "lmzoo.runtime" for n in ("Engine", "Event", "KVCache", "Request", "SamplingParams", "generate",
                                    "stream_generate")},
    **{n: "lmzoo.sizing.estimate" for n in ("MemoryEstimate", "ParamCount", "count_params", "estimate_memory",
                                            "gpus_needed")},
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmzoo' has no attribute {name!r}")
    if module == "lmzoo.sizing.estimate":
        importlib.import_module("lmzoo.catalog")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ModelConfig", "RopeScaling", "Transformer", "from_pretrained", "save_gguf", "generate", "stream_generate",
    "Engine", "Request", "Event", "KVCache", "SamplingParams",
    "count_params", "ParamCount", "estimate_memory", "MemoryEstimate", "gpus_needed",
    "list_models", "get_config", "get_entry", "UnknownModelError",
    "LmzooError", "ModelNotFoundError", "UnsupportedModelError", "CheckpointError", "ConfigError",
    "ContextLengthError", "GenerationError", "TokenizerError",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
