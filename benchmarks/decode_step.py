"""Where one CPU decode step of a GGUF model goes (issue 16): the whole step, the quantised kernels'
share of it, and the kernels' streaming rate against the host's memory read bandwidth.

    python benchmarks/decode_step.py [--model X.gguf] [--prompt 256] [--steps 60] [--threads 2]
        [--activations float|q8] [--batch B] [--kv-dtype float16] [--huge-pages]

0. prefill: the `--prompt`-token forward of `--batch` rows, best of three;
1. step: the model's forward for one token per row after that prefill (no engine), averaged; tok/s
   counts every row's token (a batched step is what serving 16 clients runs);
2. kernels: the same steps with a timer around every call into lmzoo's compiled kernels (the layers'
   fused step — all layers in one call, or block by block —, the LM head's product, norms; their sum
   per step, and per kernel), and the rest of the step (Python, PyTorch ops and dispatch outside the
   kernels);
3. pass: every quantised matrix of the model multiplied once by one row, back to back (weights come
   from DRAM, as in a decode step), in ms and GB/s of weights read, beside
   `lmzoo.tools.bench.read_bandwidth_gbs` (a plain streaming read of a large buffer).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--activations", default="float", choices=["float", "q8"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--kv-dtype", default="float32", choices=["float32", "float16"], help="the KV cache's dtype")
    ap.add_argument("--huge-pages", action="store_true", help="from_pretrained(huge_pages=True)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import lmzoo
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.quant.kernels import cpu_kernels
    from lmzoo.quant.layers import Int4Linear, Int8Linear
    from lmzoo.runtime.cache import KVCache
    from lmzoo.tools.bench import read_bandwidth_gbs

    model = lmzoo.from_pretrained(a.model or str(default_model_path()), activations=a.activations,
                                  **({"huge_pages": True} if a.huge_pages else {}))
    layers = [m for m in model.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    nbytes = sum(b.numel() * b.element_size() for m in layers for b in m.buffers())
    ids = torch.randint(100, model.config.vocab_size, (a.batch, a.prompt), generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        prefill = float("inf")
        for _ in range(3):  # best of three prompt forwards (the last one fills the cache used below)
            cache = KVCache(model, a.batch, a.prompt + 3 * a.steps + 8, dtype=getattr(torch, a.kv_dtype))
            t0 = time.perf_counter()
            tok = model(ids, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            prefill = min(prefill, time.perf_counter() - t0)

        def steps(n: int) -> float:
            nonlocal tok
            t0 = time.perf_counter()
            for _ in range(n):
                tok = model(tok, cache=cache)[:, -1].argmax(-1, keepdim=True)
            return (time.perf_counter() - t0) / n

        steps(5)
        step = steps(a.steps)
        k = cpu_kernels()
        spent, calls, per_op = [0.0], [0], {}
        originals = {n: getattr(k, n) for n in dir(k) if not n.startswith("_") and callable(getattr(k, n))}

        def timed(name, f):
            def kernel(*args):
                t = time.perf_counter()
                y = f(*args)
                dt = time.perf_counter() - t
                spent[0] += dt
                per_op[name] = per_op.get(name, 0.0) + dt
                calls[0] += 1
                return y
            return kernel

        for n, f in originals.items():
            setattr(k, n, timed(n, f))
        stack = model.decode_layers  # all layers in one call (DecodeStack.run), when the model fuses
        if stack is not None:
            model.decode_layers = timed("decode stack (all layers)", stack)
        try:
            timed_step = steps(a.steps)
        finally:
            for n, f in originals.items():
                setattr(k, n, f)
            model.decode_layers = stack
        rows = {m.in_features: torch.randn(1, m.in_features) for m in layers}
        for m in layers:
            m._kernel(k, rows[m.in_features])
        t0 = time.perf_counter()
        for _ in range(10):
            for m in layers:
                m._kernel(k, rows[m.in_features])
        dt = (time.perf_counter() - t0) / 10
    kernels = spent[0] / a.steps
    print(f"# {a.threads} threads, prompt {a.prompt}, {a.steps} steps, batch {a.batch}, activations {a.activations}, "
          f"KV cache {a.kv_dtype}" + (", huge pages" if a.huge_pages else ""))
    print(f"prefill: {prefill * 1e3:.1f} ms ({a.batch * a.prompt / prefill:.0f} tok/s)")
    print(f"step: {step * 1e3:.2f} ms ({a.batch / step:.1f} tok/s)")
    print(f"kernels: {kernels * 1e3:.2f} ms of a {timed_step * 1e3:.2f} ms timed step, "
          f"{calls[0] / a.steps:.0f} calls; "
          f"the rest {(timed_step - kernels) * 1e3:.2f} ms")
    print("  per kernel: " + ", ".join(f"{n} {t / a.steps * 1e3:.2f} ms" for n, t in
                                     sorted(per_op.items(), key=lambda kv: -kv[1])))
    print(f"pass over the quantised weights: {dt * 1e3:.2f} ms, {nbytes / 1e6:.1f} MB, {nbytes / dt / 1e9:.1f} GB/s; "
          f"memory read {read_bandwidth_gbs(a.threads):.1f} GB/s")


if __name__ == "__main__":
    main()
