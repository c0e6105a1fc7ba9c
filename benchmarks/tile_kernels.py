"""The 16-row tile kernels against the row-major ones with the weights in cache (issue 16): each
matrix multiplied 200 times by the same rows, median, in one process (no DRAM traffic after the
first call: the kernels' own instruction cost, which a batch of rows or a cache-resident model sees).

    python benchmarks/tile_kernels.py [--threads 2]          (LMZOO_CPU_ISA=avx2 for the AVX2 build)

int8: int8_linear (rows) vs tiles_linear_f (tiles), float activations; int4: tiles_linear_f with the
mins stored (Q4_1) and without (Q4_0, symmetric). Shapes: the default model's layers (960x576 qkv,
3072x576 gate|up, 576x1536 down), 1 and 8 rows.
"""

from __future__ import annotations

import argparse
import time

import torch


def median_us(f, *args, n: int = 200) -> float:
    for _ in range(20):
        f(*args)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lmzoo.quant.kernels import cpu_kernels

    k = cpu_kernels()
    print(f"# {k.isa()} build, {a.threads} threads; median us of 200 calls, weights in cache")
    print("| shape | rows | int8 rows | int8 tiles | int4 tiles (mins) | int4 tiles (Q4_0, no mins) |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for N, K in ((960, 576), (3072, 576), (576, 1536)):
        q8 = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g)
        q4 = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g)
        sc = (torch.rand(N, K // 32, generator=g) * 0.01).half()
        t8 = k.pack_tiles_q8(q8, sc, None, 32)
        t4 = k.pack_tiles_q8(q4, sc, -sc, 32)
        t4s = k.pack_tiles_q8(q4, sc, sc.new_empty(0), 32)
        for M in (1, 8):
            x = torch.randn(M, K, generator=g)
            cells = [median_us(k.int8_linear, x, q8, sc, 32), median_us(k.tiles_linear_f, x, *t8, N),
                     median_us(k.tiles_linear_f, x, *t4, N), median_us(k.tiles_linear_f, x, *t4s, N)]
            print(f"| {N}x{K} | {M} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
