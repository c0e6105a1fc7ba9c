"""A/B of the CPU kernels of two (or more) checkouts inside one process, over real decode steps.

    git worktree add /tmp/old <commit>
    python benchmarks/ab_kernels.py old=/tmp/old new=. [--prompt 300] [--batch 1] [--steps 20]
        [--pairs 30] [--huge-pages] [--activations float|q8] [--kv-dtype float16] [--model X.gguf]

Comparing two builds in separate processes mixes the change with everything that differs between
the processes: where the allocator put the weights, how much of them the host's L3 keeps, what the
other tenants do that minute (benchmarks/RESULTS.md, seventh session: the same pass varied 3.8-7.0
ms within minutes). Here each checkout's kernels are built (in its own kernel cache) and imported
into this process; one model (this checkout's Python code) runs passes of `--steps` decode steps
alternately through each build, each with its own KV cache grown from the same prompt, and the
medians of `--pairs` passes are compared: a 3-4% change shows up where separate processes could
not tell it apart. Only the compiled kernels differ between the variants, so this measures changes
to lmzoo/quant/kernels/cpu.cpp; a build must come from a commit whose DecodeStack is registered
module-local (2026-12-08 or later).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import torch


def import_build(name: str, tree: str):
    """The kernels module of checkout `tree`, built in a subprocess with its own kernel cache."""
    out = subprocess.run(
        [sys.executable, "-c", "from lmzoo.quant.kernels import cpu_kernels; print(cpu_kernels().__file__)"],
        env={**os.environ, "PYTHONPATH": str(Path(tree).resolve()),
             "LMZOO_KERNEL_CACHE": str(Path.home() / ".cache" / "lmzoo" / f"kernels-ab-{name}")},
        capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"ab_kernels: building {name} ({tree}) failed: {out.stderr.strip().splitlines()[-1:]}")
    so = out.stdout.strip().splitlines()[-1]
    spec = importlib.util.spec_from_file_location(Path(so).stem, so)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as e:  # an older build registers DecodeStack globally: one per process
        sys.exit(f"ab_kernels: {name} ({tree}) cannot share a process with another build: {e}")
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="name=checkout, two or more; the first is the baseline")
    ap.add_argument("--prompt", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20, help="decode steps a pass")
    ap.add_argument("--pairs", type=int, default=30, help="passes per variant, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--huge-pages", action="store_true")
    ap.add_argument("--activations", default="float", choices=["float", "q8"])
    ap.add_argument("--kv-dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--model")
    a = ap.parse_args()
    variants = [v.split("=", 1) for v in a.variants]
    if len(variants) < 2 or any(len(v) != 2 for v in variants):
        ap.error(f"give two or more name=checkout variants, got {a.variants}")
    builds = {name: import_build(name, tree) for name, tree in variants}
    torch.set_num_threads(a.threads)
    import lmzoo
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.quant import gemv, kernels
    from lmzoo.runtime.cache import KVCache

    model = lmzoo.from_pretrained(a.model or str(default_model_path()), huge_pages=a.huge_pages,
                                  activations=a.activations)

    def use(k) -> None:  # the kernels every later call (and the decode stack, rebuilt) goes through
        kernels._KERNELS = k
        gemv._STACKS.clear()

    ids = torch.randint(100, model.config.vocab_size, (a.batch, a.prompt), generator=torch.Generator().manual_seed(0))
    tok = torch.full((a.batch, 1), 1000)
    times: dict[str, list[float]] = {name: [] for name in builds}
    with torch.inference_mode():
        caches = {}
        for name, k in builds.items():
            use(k)
            caches[name] = KVCache(model, a.batch, a.prompt + (a.steps + 1) * a.pairs + 8,
                                   dtype=getattr(torch, a.kv_dtype))
            model(ids, cache=caches[name], last_only=True)
        for r in range(a.pairs):
            for name, k in (list(builds.items()) if r % 2 == 0 else list(builds.items())[::-1]):
                use(k)
                model(tok, cache=caches[name])  # the first step after a switch rebuilds the stack
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    model(tok, cache=caches[name])
                times[name].append((time.perf_counter() - t0) / a.steps)
    print(f"# {a.threads} threads, batch {a.batch}, prompt {a.prompt} (+{(a.steps + 1) * a.pairs} tokens over the run), "
          f"{a.pairs} alternating passes of {a.steps} steps, activations {a.activations}, KV {a.kv_dtype}"
          + (", huge pages" if a.huge_pages else ""))
    base = sorted(times[variants[0][0]])[len(times[variants[0][0]]) // 2]
    for name, v in times.items():
        v = sorted(v)
        q = [v[int(len(v) * f)] * 1e3 for f in (0.25, 0.5, 0.75)]
        print(f"{name:10s} step ms p25 {q[0]:.3f}  median {q[1]:.3f}  p75 {q[2]:.3f}   median vs {variants[0][0]} "
              f"{q[1] / 1e3 / base:.3f}")


if __name__ == "__main__":
    main()
