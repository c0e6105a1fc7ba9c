"""lmzoo: the mainstream open LLMs as configurations of one readable PyTorch Transformer."""

from lmzoo.catalog import get_config, get_entry, list_models
from lmzoo.checkpoints.load import from_pretrained
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
from lmzoo.nn.transformer import Transformer
from lmzoo.runtime import Engine, Event, KVCache, Request, SamplingParams, generate, stream_generate
from lmzoo.sizing.estimate import MemoryEstimate, ParamCount, count_params, estimate_memory, gpus_needed

__version__ = "0.1.0"

__all__ = [
    "ModelConfig", "RopeScaling", "Transformer", "from_pretrained", "generate", "stream_generate",
    "Engine", "Request", "Event", "KVCache", "SamplingParams",
    "count_params", "ParamCount", "estimate_memory", "MemoryEstimate", "gpus_needed",
    "list_models", "get_config", "get_entry", "UnknownModelError",
    "LmzooError", "ModelNotFoundError", "UnsupportedModelError", "CheckpointError", "ConfigError",
    "ContextLengthError", "GenerationError", "TokenizerError",
]
