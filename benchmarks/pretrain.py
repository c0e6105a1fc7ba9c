"""Pretraining throughput on CPU: `lmzoo pretrain` vs transformers' Trainer and litgpt, same model
shape, data, batch and optimizer settings, side by side; tokens/s and model FLOPs utilisation (MFU).

    python benchmarks/pretrain.py [--layers 4] [--width 256] [--seq 256] [--rows 8] [--steps 8] [--ddp]
    LITGPT_PYTHON=.venv-litgpt/bin/python python benchmarks/pretrain.py     # + litgpt (benchmarks/setup_litgpt.sh)

Model: a LLaMA shape from scratch (RMSNorm, SwiGLU, RoPE; `--config Llama-2-7B --set ...` for lmzoo,
the equal `LlamaConfig` for transformers), the default tokenizer's 49,152-token vocabulary, untied
head. Data: Debian's fortunes-zh (documents separated by `%`) when installed, else generated English
sentences, tokenised once by lmzoo into its token file; transformers trains on the same windows of
`--seq` tokens (its labels the same targets: -100 across a document boundary). Both: AdamW (lr 3e-4,
weight decay 0.1), cosine schedule, clipping at 1.0, `--rows` windows per step, fp32. Each side runs
in a fresh process; tokens/s is the median over the timed steps (the first two are warm-up): lmzoo's
from its metrics.jsonl (a step's wall time, data included), transformers' from a TrainerCallback
(step begin -> end). `--ddp` adds lmzoo under `torchrun --nproc-per-node 2` (one thread per rank).

MFU = FLOPs per token x tokens/s / peak, with FLOPs per token = 6 N + 12 L d T (N: parameters that
take part in matmuls, i.e. all but the input embedding; the second term is attention's scores and
values, PaLM's appendix B) and peak = this CPU's measured fp32 GEMM rate (a 2048^3 matmul, best of
several, all threads) — so the MFU is relative to what this machine's BLAS reaches, not a datasheet.

Caveat: lmzoo keeps documents apart inside a window (a per-segment attention mask: SDPA's masked
path); transformers' Llama attends across them (fused causal path), the cheaper of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VOCAB = 49152


def make_corpus(d: Path) -> Path:
    src = Path("/usr/share/games/fortunes")
    docs = []
    for f in sorted(src.glob("*.u8")) if src.is_dir() else []:
        docs += [t.strip() for t in f.read_text(encoding="utf-8", errors="ignore").split("\n%\n") if t.strip()]
    if not docs:
        import random

        rng = random.Random(0)
        words = ("the a model data train token layer weight learns from every step while loss falls and "
                 "gradients flow through attention heads into the feed forward block").split()
        docs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(3000)]
    out = d / "corpus.jsonl"
    out.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return out


def lmzoo_args(a) -> list[str]:
    return ["--config", "Llama-2-7B", "--set", f"n_layer={a.layers}", "--set", f"n_embd={a.width}",
            "--set", f"n_head={a.heads}", "--set", f"n_kv_head={a.heads}", "--set", f"intermediate_size={a.mlp}",
            "--set", f"max_seq_len={a.seq}"]


def run_lmzoo(a, corpus: Path, work: Path, env: dict, nproc: int = 0) -> dict:
    out = work / f"lmzoo-{nproc or 1}"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
              "lmzoo"] if nproc else [sys.executable, "-m", "lmzoo"]
    cmd = [*launch, "pretrain", "--quiet", *lmzoo_args(a), "--data", str(corpus), "--out", str(out), "--overwrite",
           "--seq-len", str(a.seq), "--batch-size", str(a.rows), "--max-steps", str(a.steps + 2), "--lr", "3e-4",
           "--weight-decay", "0.1", "--warmup-steps", "1"]
    e = {**env, "OMP_NUM_THREADS": "1"} if nproc else env
    r = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if r.returncode:
        raise SystemExit(f"lmzoo failed:\n{r.stderr[-3000:]}")
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tps = statistics.median(x["tokens_per_s"] for x in m[2:])
    return {"tokens_per_s": tps, "loss": (m[0]["loss"], m[-1]["loss"])}


def windows(a, corpus: str) -> list:
    """The (ids, targets, _) windows the transformers and litgpt sides train on, in order."""
    import torch

    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer
    from lmzoo.train.corpus import TokenWindows, tokenize_corpus

    tok_path = str(default_model_path())
    tokens, starts, _ = tokenize_corpus([corpus], load_tokenizer(tok_path), str(Path(tok_path).resolve()))
    w = TokenWindows(tokens, starts, a.seq)
    order = torch.randperm(len(w), generator=torch.Generator().manual_seed(0)).tolist()
    return [w.window(i) for i in order[: a.rows * (a.steps + 2)]]


def litgpt_worker(a, path: str) -> dict:
    """litgpt's pretraining step (litgpt.pretrain.fit's body) on the saved windows; no lmzoo import."""
    import lightning as L
    import torch
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    ids, targets = torch.load(path)
    cfg = Config(name="bench", block_size=a.seq, vocab_size=VOCAB, padded_vocab_size=VOCAB, n_layer=a.layers,
                 n_head=a.heads, n_embd=a.width, n_query_groups=a.heads, rotary_percentage=1.0,
                 parallel_residual=False, bias=False, norm_class_name="RMSNorm", norm_eps=1e-5,
                 mlp_class_name="LLaMAMLP", intermediate_size=a.mlp, rope_base=10000)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision="32-true")
    torch.manual_seed(0)
    model = GPT(cfg)
    model.apply(model._init_weights)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.999))  # as the others
    model, opt = fabric.setup(model, opt)
    times, losses = [], []
    for i in range(a.steps + 2):
        t0 = time.perf_counter()
        x, y = ids[i * a.rows:(i + 1) * a.rows], targets[i * a.rows:(i + 1) * a.rows]
        loss = chunked_cross_entropy(model(x), y)
        fabric.backward(loss)
        fabric.clip_gradients(model, opt, max_norm=1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
        times.append(time.perf_counter() - t0)
    return {"tokens_per_s": a.rows * a.seq / statistics.median(times[2:]), "loss": (losses[0], losses[-1])}


def run_litgpt(a, corpus: Path, work: Path, env: dict) -> dict | None:
    exe = os.environ.get("LITGPT_PYTHON")
    if not exe:
        return None
    import torch

    rows = windows(a, str(corpus))
    path = work / "windows.pt"
    torch.save((torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])), path)
    r = subprocess.run([exe, __file__, "--litgpt-worker", str(path), *sys.argv[1:]], capture_output=True, text=True,
                       env={k: v for k, v in env.items() if k != "PYTHONPATH"})
    if r.returncode:
        raise SystemExit(f"litgpt failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def hf_worker(a, corpus: str) -> dict:
    import torch
    import transformers

    rows = windows(a, corpus)

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            ids, targets, _ = rows[i]
            # HF shifts labels itself: labels[t] = the target of position t - 1
            labels = torch.cat([torch.tensor([-100]), targets[:-1]])
            return {"input_ids": ids, "labels": labels}

    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=a.width, intermediate_size=a.mlp,
                                   num_hidden_layers=a.layers, num_attention_heads=a.heads,
                                   num_key_value_heads=a.heads, max_position_embeddings=a.seq, rms_norm_eps=1e-5,
                                   rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    times: list[float] = []
    losses: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=a.rows, max_steps=a.steps + 2, learning_rate=3e-4,
            weight_decay=0.1, lr_scheduler_type="cosine", warmup_steps=1, max_grad_norm=1.0, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
        transformers.Trainer(model=model, args=args, train_dataset=Windows(), callbacks=[Clock()]).train()
    return {"tokens_per_s": a.rows * a.seq / statistics.median(times[2:]), "loss": (losses[0], losses[-1])}


def run_hf(a, corpus: Path, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--hf-worker", str(corpus), *sys.argv[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"transformers failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def peak_flops() -> float:
    import torch

    x, y = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x @ y
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(4):
            x @ y
        best = max(best, 4 * 2 * 2048 ** 3 / (time.perf_counter() - t0))
    return best


def flops_per_token(a) -> float:
    d, L, I, T = a.width, a.layers, a.mlp, a.seq
    n = L * (4 * d * d + 3 * d * I + 2 * d) + d + d * VOCAB  # blocks, final norm, head (not the input embedding)
    return 6 * n + 12 * L * d * T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=688)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--ddp", action="store_true", help="also lmzoo on 2 ranks (torchrun, DDP, 1 thread each)")
    p.add_argument("--hf-worker", help=argparse.SUPPRESS)
    p.add_argument("--litgpt-worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.hf_worker:
        print(json.dumps(hf_worker(a, a.hf_worker)))
        return
    if a.litgpt_worker:
        print(json.dumps(litgpt_worker(a, a.litgpt_worker)))
        return
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "LMZOO_CACHE": str(work / "cache"),
               "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)}
        corpus = make_corpus(work)
        peak = peak_flops()
        fpt = flops_per_token(a)
        rows = [("lmzoo", run_lmzoo(a, corpus, work, env)), ("transformers Trainer", run_hf(a, corpus, env))]
        lit = run_litgpt(a, corpus, work, env)
        if lit:
            rows.append(("litgpt (pretrain loop, Fabric)", lit))
        if a.ddp:
            rows.append(("lmzoo DDP 2 ranks x 1 thread", run_lmzoo(a, corpus, work, env, nproc=2)))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs; "
          f"measured fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s")
    print(f"shape: LLaMA {a.layers} layers, d={a.width}, {a.heads} heads, MLP {a.mlp}, vocab {VOCAB}, "
          f"seq {a.seq}, {a.rows} rows/step, {a.steps} timed steps; {fpt / 1e6:.1f} MFLOP/token")
    hf = rows[1][1]["tokens_per_s"]
    print("| backend | tokens/s | MFU | vs transformers | loss first -> last |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        t = r["tokens_per_s"]
        print(f"| {name} | {t:.0f} | {100 * fpt * t / peak:.1f}% | {t / hf:.2f}x | "
              f"{r['loss'][0]:.3f} -> {r['loss'][1]:.3f} |")


if __name__ == "__main__":
    main()
