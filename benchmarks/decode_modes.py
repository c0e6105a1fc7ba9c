"""lmzoo's decode paths side by side on one model: eager (sliced cache), static (fixed shapes,
lmzoo.runtime.compiled) and compiled (torch.compile of the static step; CUDA graphs on GPU).

    python benchmarks/decode_modes.py [--device cpu|cuda] [--dtype float32|bfloat16]

The CPU shape is issue 5's (Llama, d=768, 12 layers, 12 heads, 4 KV heads, MLP 2048, vocab 32000,
prompt 32, 128 new tokens, greedy); on CUDA pass --shape llama2-7b. Prints tok/s per path, the
speed-up over eager, and whether the tokens match eager."""

from __future__ import annotations

import argparse
import time

import torch

import lmzoo
from lmzoo.nn.transformer import Transformer

SHAPES = {
    "llama-d768": dict(vocab_size=32000, n_layer=12, n_embd=768, n_head=12, n_kv_head=4, intermediate_size=2048,
                       max_seq_len=2048),
    "llama2-7b": dict(vocab_size=32000, n_layer=32, n_embd=4096, n_head=32, n_kv_head=32, intermediate_size=11008,
                      max_seq_len=4096),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-d768", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--quant", choices=("int8", "int4"), help="weight-only quantisation first (lmzoo.quant.layers)")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    with torch.device("meta"):
        m = Transformer(lmzoo.ModelConfig(**SHAPES[a.shape]))
    m = m.to_empty(device=a.device).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    m.reset_buffers(device=a.device)
    m.eval()
    if a.device == "cpu" and dtype == torch.float32:
        from lmzoo.quant.gemv import use_cpu_kernels

        use_cpu_kernels(m)  # what from_pretrained does on CPU
    if a.quant:
        from lmzoo.quant.layers import quantize

        quantize(m, mode=a.quant)
    ids = torch.randint(0, 32000, (1, a.prompt), device=a.device)
    quant = ", " + a.quant if a.quant else ""
    print(f"{a.shape}, {a.device}, {a.dtype}{quant}, prompt {a.prompt}, {a.new} new tokens, torch {torch.__version__}")
    print("| decode | tok/s | vs eager | tokens equal eager |")
    print("|---|---|---|---|")
    ref, base = None, None
    for mode in ("eager", "static", "compiled"):
        t_warm = time.perf_counter()
        # warm-up / compile, at the timed cache length (a compiled step is specialised to it)
        lmzoo.generate(m, ids, max_new_tokens=a.new, eos_token_id=[], decode=mode)
        warm = time.perf_counter() - t_warm
        if a.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = lmzoo.generate(m, ids, max_new_tokens=a.new, eos_token_id=[], decode=mode)
        if a.device == "cuda":
            torch.cuda.synchronize()
        tps = a.new / (time.perf_counter() - t0)
        ref = out if ref is None else ref
        base = tps if base is None else base
        print(f"| {mode} | {tps:.1f} | {tps / base:.2f}x | {bool(torch.equal(out, ref))} |  (warm-up {warm:.1f} s)")


if __name__ == "__main__":
    main()
