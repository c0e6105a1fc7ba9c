"""Parameter counts and memory estimates computed from an architecture (sizing.estimate)."""

from lmzoo.sizing.estimate import MemoryEstimate, ParamCount, count_params, estimate_memory, gpus_needed

__all__ = ["MemoryEstimate", "ParamCount", "count_params", "estimate_memory", "gpus_needed"]
