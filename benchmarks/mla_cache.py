"""MLA cache forms side by side: expanded per-head k/v vs the compressed latent (lmzoo.nn.mla), on a
DeepSeek-V2-Lite-shaped attention (16 heads, kv_lora_rank 512, rope 64, nope 128, v 128), a few
layers with dense MLPs, random weights, fp32, batch 1.

    python benchmarks/mla_cache.py [--layers 4] [--prompt 2048] [--new 32]

Prints cache bytes per token per layer, the cache size for the run, prefill time and decode tok/s
for both forms, and the max logit difference between them."""

from __future__ import annotations

import argparse
import time

import torch

import lmzoo
from lmzoo.nn.transformer import Transformer
from lmzoo.runtime import KVCache


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--new", type=int, default=32)
    a = ap.parse_args()
    cfg = lmzoo.ModelConfig(vocab_size=32000, n_layer=a.layers, n_embd=2048, n_head=16, intermediate_size=4096,
                            max_seq_len=a.prompt + a.new, attention="mla", kv_lora_rank=512, q_lora_rank=None,
                            qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 32000, (1, a.prompt))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; DeepSeek-V2-Lite attention shape, "
          f"{a.layers} layers, prompt {a.prompt}, {a.new} new tokens, fp32")
    print("| cache | values/token/layer | cache MiB (this run) | prefill s | decode tok/s |")
    print("|---|---|---|---|---|")
    logits = {}
    for kind in ("expanded", "latent"):
        cache = KVCache(model, 1, a.prompt + a.new, mla_cache=kind)
        per_tok = cache.k[0][0, :, 0].numel() + (cache.v[0][0, :, 0].numel() if cache.v[0] is not None else 0)
        mib = cache.full_nbytes() / 2**20
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(ids, cache=cache, last_only=True)
            t1 = time.perf_counter()
            toks = []
            for _ in range(a.new):
                nxt = out[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
                out = model(nxt, cache=cache)
            t2 = time.perf_counter()
        logits[kind] = out
        print(f"| {kind} | {per_tok} | {mib:.0f} | {t1 - t0:.2f} | {a.new / (t2 - t1):.1f} |")
    print(f"max |logit diff| after {a.new} steps: {(logits['expanded'] - logits['latent']).abs().max():.2e}")


if __name__ == "__main__":
    main()
