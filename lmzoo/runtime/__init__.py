"""Running a model: the caller-owned KV cache, sampling, stop matching, the engine (continuous
batching) and the thin generation wrappers over it."""

from lmzoo.runtime.cache import KVCache
from lmzoo.runtime.engine import Engine, Event, Request
from lmzoo.runtime.generate import generate, stream_generate
from lmzoo.runtime.sampling import SamplingParams

__all__ = ["KVCache", "Engine", "Event", "Request", "SamplingParams", "generate", "stream_generate"]
