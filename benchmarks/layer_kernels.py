"""One quantised layer of the default model's shapes through the CPU kernels, warm caches: microseconds
a call and multiply-adds per second for 1 and 16 activation rows (issue 9: what a 16-row decode
step's matrices cost).

    python benchmarks/layer_kernels.py [--activations q8|float] [--threads 2]

Random weights, quantised like a GGUF's (int4 Q4_1-style groups of 32 for the block matrices, int8
groups of 32 for the 49152-row tied head); `--activations` is the layers' `set_activations`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--activations", default="q8", choices=["q8", "float"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lmzoo.quant.layers import Int4Linear, Int8Linear, set_activations

    torch.manual_seed(0)
    print(f"# {a.threads} threads, activations {a.activations}")
    for name, N, K, cls in [("gate_up int4", 3072, 576, Int4Linear), ("down int4", 576, 1536, Int4Linear),
                            ("head int8", 49152, 576, Int8Linear)]:
        q = cls.from_linear(nn.Linear(K, N, bias=False), group_size=32)
        set_activations(q, a.activations)
        for M in (1, 16):
            x = torch.randn(M, K)
            with torch.inference_mode():
                for _ in range(3):
                    q(x)
                n = 200 if N < 10000 else 20
                t0 = time.perf_counter()
                for _ in range(n):
                    q(x)
                dt = (time.perf_counter() - t0) / n
            print(f"{name:13s} {N} x {K}  rows {M:2d}: {dt * 1e6:8.1f} us  {M * N * K / dt / 1e9:6.1f} GMAC/s")


if __name__ == "__main__":
    main()
