"""Training throughput and peak memory: lmzoo vs transformers + peft, same weights, data and batch.

    python benchmarks/train.py [--rows 4] [--seq 256] [--steps 6] [--rounds 2] [--prompt-fraction 0,0.5]
                               [--precision fp32,bf16] [--methods lora,full,qlora-gguf]

The default model (SmolLM2-135M-Instruct) is exported once as a float32 HF checkpoint (lmzoo export),
and both sides load that directory. Each (backend, method) runs in a fresh process, alternating
backends, `--rounds` times: 2 warm-up steps, then `--steps` timed optimizer steps on a fixed batch of
random ids (every token a target, or with --prompt-fraction F the first F of each row a prompt without
targets, as SFT on instruction or chat data masks the prompt: the same ids and labels for both sides),
AdamW lr 1e-4. Methods: LoRA r=8 alpha=16 on every linear layer of
the blocks, and full fine-tuning; plus lmzoo's LoRA over the GGUF's own 4-bit blocks (QLoRA-style,
a row transformers + peft have no counterpart for on CPU). tokens/s = rows x seq x steps / time;
peak = the process's max RSS (ru_maxrss), which includes the Python/torch baseline of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(backend: str, method: str, path: str, rows: int, seq: int, steps: int, prompt: float = 0.0,
           precision: str = "fp32") -> dict:
    import resource
    import time

    import torch

    torch.manual_seed(0)
    V = 49152
    ids = torch.randint(0, V, (rows, seq), generator=torch.Generator().manual_seed(1))
    P = int(prompt * seq)  # tokens 0..P-1 of a row are its prompt: no loss on predicting them
    if backend == "transformers":
        import peft
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if method == "lora":
            model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))

        labels = ids.clone()
        labels[:, :P] = -100  # transformers shifts: labels[t] is the target of position t - 1

        def loss_fn():
            return model(input_ids=ids, labels=labels).loss
    else:
        import lmzoo
        from lmzoo.checkpoints.peft import add_lora
        from lmzoo.train.data import IGNORE, Batch
        from lmzoo.train.loop import SFTObjective

        if method == "qlora-gguf":
            from lmzoo.checkpoints.assets import default_model_path

            model = lmzoo.from_pretrained(default_model_path(), cpu_kernels=False)  # int4/int8 blocks kept
        else:
            model = lmzoo.from_pretrained(path, dtype=torch.float32, cpu_kernels=False)
        if method in ("lora", "qlora-gguf"):
            add_lora(model, targets="all-linear", r=8, alpha=16)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        targets = torch.cat([ids[:, 1:], torch.full((rows, 1), IGNORE)], dim=1)
        targets[:, :max(P - 1, 0)] = IGNORE  # targets[t] = ids[t + 1]: none inside the prompt
        batch = Batch(ids, targets, torch.zeros_like(ids))
        obj = SFTObjective()
        if precision == "bf16":
            from lmzoo.train.loop import hold_frozen_linears

            hold_frozen_linears(model, torch.bfloat16)

        def loss_fn():
            total, _ = obj.loss(model, batch)
            return total / obj.units(batch)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn()
        loss.backward()
        opt.step()
        return float(loss)

    for _ in range(2):
        first = step()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    return {"tokens_per_s": rows * seq * steps / dt, "peak_mib": peak, "first_loss": first, "last_loss": last,
            "trainable": sum(p.numel() for p in params)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-fraction", default="0,0.5", help="share of each row that is a prompt "
                    "without targets (SFT with the prompt masked; 0: every token a target), comma-separated")
    ap.add_argument("--precision", default="fp32,bf16", help="fp32 | bf16 (autocast), comma-separated")
    ap.add_argument("--methods", default="lora,full,qlora-gguf")
    ap.add_argument("--worker", nargs=3, metavar=("BACKEND", "METHOD", "PATH"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a.rows, a.seq, a.steps, float(a.prompt_fraction), a.precision)))
        return
    tmp = Path(tempfile.mkdtemp()) / "smollm2-hf"
    subprocess.run([sys.executable, "-m", "lmzoo", "export", "--out", str(tmp)], check=True, capture_output=True)
    methods = a.methods.split(",")
    runs = [(backend, method, float(pf), prec) for pf in a.prompt_fraction.split(",") for prec in a.precision.split(",")
            for method in methods for backend in ("lmzoo", "transformers") if backend == "lmzoo" or method != "qlora-gguf"]
    results: dict[tuple, list] = {r: [] for r in runs}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(a.rounds):
        for backend, method, pf, prec in runs:
            out = subprocess.run([sys.executable, __file__, "--worker", backend, method, str(tmp), "--rows", str(a.rows),
                                  "--seq", str(a.seq), "--steps", str(a.steps), "--prompt-fraction", str(pf),
                                  "--precision", prec], capture_output=True, text=True, env=env, check=True)
            results[(backend, method, pf, prec)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"rows={a.rows} seq={a.seq} steps={a.steps} rounds={a.rounds} (SmolLM2-135M, CPU, {torch_threads()} threads)")
    print(f"{'prompt':>6} {'prec':5} {'backend':13} {'method':11} {'tokens/s':>17} {'peak MiB':>15} {'trainable':>12} "
          f"{'loss first->last':>18}")
    for (backend, method, pf, prec), rs in results.items():
        tps = [r["tokens_per_s"] for r in rs]
        mem = [r["peak_mib"] for r in rs]
        r0 = rs[0]
        print(f"{pf:6.2f} {prec:5} {backend:13} {method:11} {min(tps):8.0f}-{max(tps):<8.0f} {min(mem):7.0f}-{max(mem):<7.0f} "
              f"{r0['trainable']:12,} {r0['first_loss']:8.3f}->{r0['last_loss']:.3f}")
    for (backend, method, pf, prec), ours in results.items():
        theirs = results.get(("transformers", method, pf, prec))
        if backend != "lmzoo" or not theirs:
            continue
        ot, tt = [r["tokens_per_s"] for r in ours], [r["tokens_per_s"] for r in theirs]
        om, tm = [r["peak_mib"] for r in ours], [r["peak_mib"] for r in theirs]
        print(f"prompt {pf:.2f} {prec} {method}: lmzoo / transformers+peft tokens/s "
              f"{min(ot) / max(tt):.2f}-{max(ot) / min(tt):.2f}x, peak memory {min(om) / max(tm):.2f}-{max(om) / min(tm):.2f}x")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()

if __name__ == "__main__":
    main()
