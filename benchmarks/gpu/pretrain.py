"""GPU check for pretraining (issue 15, item 5): `lmzoo pretrain`'s own loop (lmzoo.train.loop.Trainer)
on a 1.1B Llama shape (TinyLlama's: 22 layers, d=2048, 32 query / 4 key-value heads, MLP 5632,
vocabulary 32,000, untied head), from a random init, with FSDP2 on one GPU (bf16 compute, fp32 master
weights and reduction), every block compiled (torch.compile, as torchtitan does), sequences of 2048.
Prints one JSON line: tokens/s (median of the steps after the compile warm-up), model FLOPs
utilisation and peak memory. Meant for one H200 in well under 8 minutes:

    python benchmarks/gpu/pretrain.py                 # on the GPU machine
    python benchmarks/gpu/pretrain.py --smoke         # the same code on a tiny shape on CPU (what CI runs)

MFU = (6 N + 12 L d T) x tokens/s / peak bf16 FLOP/s (N: parameters in matmuls, all but the input
embedding; 12 L d T: attention scores and values, PaLM's appendix B; H200 dense bf16: 989 TFLOP/s).
Target: >= 50% (torchtitan reports 33-39% for Llama-3 8B on H100s). Data: random tokens as a token
file of documents of 512-4096 tokens (throughput does not depend on what the tokens say; the
tokenizer is not on the GPU machine), read by the loop's own windows and batches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def shape(smoke: bool):
    import lmzoo

    base = lmzoo.get_config("Llama-2-7B")
    if smoke:
        return base.replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128, vocab_size=512,
                            head_dim=None, max_seq_len=128), 4, 64
    return base.replace(n_layer=22, n_embd=2048, n_head=32, n_kv_head=4, intermediate_size=5632, vocab_size=32000,
                        head_dim=None, max_seq_len=2048), 8, 2048


def flops_per_token(cfg, seq: int) -> float:
    n = cfg.n_layer * (cfg.n_embd * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * cfg.n_embd
                       + 3 * cfg.n_embd * cfg.intermediate_size) + cfg.n_embd * cfg.vocab_size
    return 6 * n + 12 * cfg.n_layer * cfg.n_embd * seq


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5, help="steps left out of the median (compilation)")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --smoke for the CPU form")

    from lmzoo.checkpoints.peft import CheckpointLayout
    from lmzoo.nn.transformer import Transformer
    from lmzoo.train.corpus import TokenWindows
    from lmzoo.train.loop import SFTObjective, TrainConfig, Trainer
    from lmzoo.train.pretrain import init_weights

    cfg, rows, seq = shape(a.smoke)
    rng = np.random.default_rng(0)
    n_tokens = rows * seq * (a.steps + 1)
    tokens = rng.integers(0, cfg.vocab_size, n_tokens, dtype=np.int64).astype(np.uint32)
    lengths = rng.integers(seq // 4, 2 * seq, n_tokens // (seq // 4) + 1)  # documents of seq/4 .. 2 seq tokens
    starts = np.concatenate([[0], np.cumsum(lengths)])
    train = TokenWindows(tokens, starts[starts < n_tokens], seq)

    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(cfg)
    init_weights(model)
    model.checkpoint_layout = CheckpointLayout("llama", {})
    for p in model.parameters():
        p.requires_grad_(True)
    tc = TrainConfig(lr=3e-4, warmup_steps=2, max_steps=a.steps, batch_size=rows, seq_len=seq, log_every=1,
                     parallel="fsdp", mixed_precision="bf16", device=device, compile=not a.no_compile,
                     keep_checkpoints=1, autocast_bf16=True)  # CUDA's default, and the CPU form takes its path
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, tc, train, out_dir=Path(tmp) / "run", objective=SFTObjective(),
                          make_batches=lambda data, epoch, seed: data.batches(rows, seed, epoch),
                          batches_per_epoch=len(train) // rows, progress=False)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.fit()
        m = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    tps = statistics.median(x["tokens_per_s"] for x in m[a.warmup:])
    out = {"shape": f"{cfg.n_layer}L d{cfg.n_embd} {cfg.n_head}/{cfg.n_kv_head} heads MLP {cfg.intermediate_size} "
                    f"vocab {cfg.vocab_size}", "params": sum(p.numel() for p in model.parameters()),
           "rows": rows, "seq": seq, "steps": a.steps, "compile": not a.no_compile,
           "tokens_per_s": round(tps, 1), "loss_first": m[0]["loss"], "loss_last": m[-1]["loss"]}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        out.update(device=name, peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   mfu=round(flops_per_token(cfg, seq) * tps / peak, 3) if peak else None)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
