"""CPU decode kernels (lmzoo/kernels/cpu.cpp), compiled on first use with torch.utils.cpp_extension
and cached by torch in ~/.cache/torch_extensions. Without a compiler everything still runs, through
plain PyTorch ops, only slower."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

_KERNELS: object | None = None
_TRIED = False


def cpu_kernels():
    """The compiled module (f32_linear, int8_linear, int4_linear), or None if it cannot be built."""
    global _KERNELS, _TRIED
    if _TRIED:
        return _KERNELS
    _TRIED = True
    try:
        from torch.utils.cpp_extension import load

        # -fopenmp: at::parallel_for is an OpenMP pragma in a header; without it, one thread
        flags = ["-O3", "-fopenmp"]
        if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
        src = Path(__file__).parent / "cpu.cpp"
        if sys.stderr.isatty():
            print("lmzoo: building CPU kernels (first use only)...", file=sys.stderr, flush=True)
        _KERNELS = load(name="lmzoo_cpu", sources=[str(src)], extra_cflags=flags,
                        extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # no compiler / ninja: correct, just slower
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        warnings.warn(f"lmzoo: CPU kernels unavailable ({msg}); using plain PyTorch ops", stacklevel=2)
        _KERNELS = None
    return _KERNELS
