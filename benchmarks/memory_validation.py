"""Predicted (lmzoo.sizing.estimate.estimate_memory) vs measured peak memory, on CPU.

Each case runs in a fresh subprocess: import torch + lmzoo, warm the kernels up on a tiny model (so
library code pages are already resident), read the resident set size (RSS) as the baseline, reset the
kernel's high-water mark (`echo 5 > /proc/self/clear_refs`), build the model straight into its dtype
(meta device -> to_empty -> in-place random init, no fp32 detour), run the task, and read the
high-water mark (VmHWM). measured = VmHWM - baseline. The estimate is called with device="cpu" (no
CUDA context) and the model's real compute dtype.

Every case runs twice: with glibc's default allocator settings, and with MALLOC_MMAP_THRESHOLD_=131072.
By default glibc raises its mmap threshold after freeing a large block (up to 32 MiB), so later
tensors of a few MiB to 32 MiB come from the heap and freed ones stay resident (the RSS keeps memory
no tensor uses). A fixed threshold maps every block >= 128 KiB separately and returns it on free, so
the high-water mark is the peak of live tensors — what the estimator predicts. Both are reported.

    python benchmarks/memory_validation.py            # all cases, a markdown table on stdout
    python benchmarks/memory_validation.py --case infer-fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CASES = {
    # name: (shape, task, dtype, batch, context, extra)
    "infer-fp32": ("llama", "infer", "fp32", 4, 4096, {}),
    "infer-bf16": ("llama", "infer", "bf16", 2, 8192, {}),
    "infer-int8": ("llama", "infer", "int8", 4, 2048, {}),
    "infer-int4": ("llama", "infer", "int4", 4, 2048, {}),
    "infer-gpt2-fp32": ("gpt2", "infer", "fp32", 4, 2048, {}),
    "train-fp32": ("llama", "train", "fp32", 4, 512, {}),
    "train-fp32-ckpt": ("llama", "train", "fp32", 8, 1024, {"activation_checkpointing": True}),
    "lora-fp32": ("llama", "lora", "fp32", 4, 1024, {"lora_rank": 16}),
}

SHAPES = {
    # Llama-shaped: RMSNorm, SwiGLU, GQA 8/2, untied head
    "llama": dict(vocab_size=32000, n_layer=8, n_embd=512, n_head=8, n_kv_head=2, intermediate_size=1408,
                  max_seq_len=8192),
    # GPT-2-shaped: LayerNorm, GELU, MHA, learned positions, biases, tied head
    "gpt2": dict(vocab_size=50257, n_layer=8, n_embd=512, n_head=8, intermediate_size=2048, max_seq_len=2048,
                 norm="layernorm", mlp="gelu_tanh", position="learned", qkv_bias=True, attn_out_bias=True,
                 mlp_bias=True, tie_embeddings=True),
}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


class LoRALinear:
    """y = W x + (B A x) * alpha / r with W frozen (Hu et al. 2021); wraps an nn.Linear's forward."""

    @staticmethod
    def wrap(lin, r: int):
        import torch
        from torch import nn

        A = nn.Parameter(torch.randn(r, lin.in_features) * 0.01)
        B = nn.Parameter(torch.zeros(lin.out_features, r))
        lin.register_parameter("lora_A", A)
        lin.register_parameter("lora_B", B)
        base = lin.forward

        def forward(x):
            return base(x) + (x @ A.t()) @ B.t() * (16.0 / r)

        lin.forward = forward


def run_case(name: str) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    import lmzoo
    from lmzoo.nn.transformer import Transformer
    from lmzoo.quant.layers import quantize
    from lmzoo.runtime import KVCache

    shape, task, dtype, batch, context, extra = CASES[name]
    cfg = lmzoo.ModelConfig(**SHAPES[shape])
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(dtype, torch.float32)

    def build(c, dt):
        torch.set_default_dtype(dt)
        with torch.device("meta"):
            m = Transformer(c)
        m = m.to_empty(device="cpu")
        torch.set_default_dtype(torch.float32)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02)
        m.reset_buffers(device="cpu")
        return m

    # warm-up on a tiny model of the same kind: loads kernels and grows thread pools before the baseline
    tiny = build(cfg.replace(n_layer=1, vocab_size=256, max_seq_len=256), tdtype)
    ids = torch.randint(0, 256, (2, 64))
    if task == "infer":
        if dtype in ("int8", "int4"):
            quantize(tiny, mode=dtype)
        with torch.inference_mode():
            tiny(ids, cache=KVCache(tiny, 2, 128), last_only=True)
    else:
        loss = F.cross_entropy(tiny(ids).float().flatten(0, 1), ids.flatten())
        loss.backward()
        torch.optim.AdamW(tiny.parameters()).step()
    del tiny, ids
    import gc

    gc.collect()
    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.time()

    model = build(cfg, tdtype)
    ids = torch.randint(0, cfg.vocab_size, (batch, context))
    if task == "infer":
        if dtype in ("int8", "int4"):
            quantize(model, mode=dtype)
            gc.collect()
        with torch.inference_mode():
            model(ids, cache=KVCache(model, batch, context), last_only=True)
    else:
        if task == "lora":
            model.requires_grad_(False)
            for mod in list(model.modules()):
                for child in list(mod.children()):
                    if isinstance(child, torch.nn.Linear) and child is not model.lm_head:
                        LoRALinear.wrap(child, extra["lora_rank"])
        if extra.get("activation_checkpointing"):
            from torch.utils.checkpoint import checkpoint

            for layer in model.layers:
                f = layer.forward
                layer.forward = (lambda f: lambda *a: checkpoint(f, *a, use_reentrant=False))(f)  # noqa: B023 (bound by the outer lambda)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):  # the second step runs with the optimizer states already allocated
            logits = model(ids)
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
            loss.backward()  # logits stay referenced through backward, as HF's outputs.logits do
            del logits
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
    peak = _status("VmHWM")
    secs = time.time() - t0

    est_kw = {k: v for k, v in extra.items()}
    est = lmzoo.estimate_memory(cfg, task=task, dtype=dtype, context=context, batch=batch, device="cpu",
                                compute_dtype="fp32" if dtype in ("fp32", "int8", "int4") else "bf16", **est_kw)
    return {"case": name, "shape": shape, "task": task, "dtype": dtype, "batch": batch, "context": context,
            "measured": peak - base, "predicted": est.total, "breakdown": est.breakdown, "seconds": round(secs, 1),
            "params": est.params}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=sorted(CASES), help="run one case in this process (JSON out)")
    ap.add_argument("--cases", nargs="*", choices=sorted(CASES), help="subset for the table")
    args = ap.parse_args()
    if args.case:
        torch_threads = os.environ.get("LMZOO_THREADS")
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        print(json.dumps(run_case(args.case)))
        return
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in (args.cases or CASES):
        runs = {}
        for label, extra_env in (("fixed", {"MALLOC_MMAP_THRESHOLD_": "131072"}), ("default", {})):
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            env.update(PYTHONPATH=root, **extra_env)
            out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, env=env)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"case {name} failed")
            runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
        r = runs["fixed"]
        r["measured_default"] = runs["default"]["measured"]
        rows.append(r)
        print(f"# {name}: predicted {r['predicted'] / 2**20:.0f} MiB, measured {r['measured'] / 2**20:.0f} MiB "
              f"(default malloc {r['measured_default'] / 2**20:.0f}) ({r['seconds']} s)", file=sys.stderr)
    mib = 2**20
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print()
    print("| case | model | task | dtype | batch x context | predicted MiB | measured MiB (fixed mmap threshold) "
          "| error | measured MiB (default malloc) | error | predicted breakdown (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = r["predicted"] / r["measured"] - 1
        err_d = r["predicted"] / r["measured_default"] - 1
        parts = ", ".join(f"{k} {v / mib:.0f}" for k, v in r["breakdown"].items())
        print(f"| {r['case']} | {r['shape']} ({r['params'] / 1e6:.1f}M) | {r['task']} | {r['dtype']} | "
              f"{r['batch']} x {r['context']} | {r['predicted'] / mib:.0f} | {r['measured'] / mib:.0f} | "
              f"{err:+.1%} | {r['measured_default'] / mib:.0f} | {err_d:+.1%} | {parts} |")


if __name__ == "__main__":
    main()
