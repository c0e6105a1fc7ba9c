"""Decode attention on the CPU (issue 9 / 16): one query per row against 30 layers' KV caches of the
default model's shape (9 query heads, 3 kv heads, head_dim 64), float32 and float16 caches, through
the kernel a decode step calls (lmzoo/quant/kernels/cpu.cpp, decode_attention). Each layer has its
own cache, so they come from DRAM as in a real step; best of 6.

    python benchmarks/attention.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from lmzoo.quant.kernels import cpu_kernels

    k = cpu_kernels()
    H, Hkv, hd, layers = 9, 3, 64, 30
    print(f"# {a.threads} threads, {layers} layers, H {H}, Hkv {Hkv}, head_dim {hd}, build {k.isa()}")
    for B, T in [(1, 1024), (1, 4096), (16, 64), (16, 256)]:
        for dt in (torch.float32, torch.float16):
            caches = [(torch.randn(B, Hkv, T + 64, hd).to(dt), torch.randn(B, Hkv, T + 64, hd).to(dt))
                      for _ in range(layers)]
            qkv = torch.randn(B, 1, (H + 2 * Hkv) * hd)
            rows, slots = torch.arange(B), torch.full((B,), T)
            best = float("inf")
            for _ in range(6):
                t0 = time.perf_counter()
                for kc, vc in caches:
                    k.decode_attention(qkv, kc, vc, rows, slots, T + 1, None, H, Hkv, hd ** -0.5)
                best = min(best, time.perf_counter() - t0)
            mb = layers * 2 * B * Hkv * (T + 1) * hd * dt.itemsize / 1e6
            print(f"rows {B:2d}, {T:4d} cached tokens, {str(dt)[6:]:7s}: {best * 1e3:6.2f} ms a step "
                  f"({mb:5.0f} MB of cache, {mb / 1e3 / best:4.0f} GB/s)")


if __name__ == "__main__":
    main()
