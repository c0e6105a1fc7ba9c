"""Transforms that change a built model's Linear layers: weight-only int8 / int4 layers
(quant.layers) and the CPU GEMV path for float weights (quant.gemv), both backed by the small C++
kernels in quant/kernels. Inference transforms: a product autograd records always takes the
differentiable path."""

from lmzoo.quant.gemv import GemvLinear, use_cpu_kernels
from lmzoo.quant.kernels import cpu_kernels
from lmzoo.quant.layers import Int4Linear, Int8Linear, quantize

__all__ = ["GemvLinear", "Int4Linear", "Int8Linear", "cpu_kernels", "quantize", "use_cpu_kernels"]
