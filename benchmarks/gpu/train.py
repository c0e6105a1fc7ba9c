"""GPU check for fine-tuning: one LoRA and one full fine-tuning run on Llama shapes with random
weights, through lmzoo's own objective, optimizer groups and bf16 autocast; prints tokens/s, MFU and
peak memory. Meant for one H200 in well under 8 minutes:

    python benchmarks/gpu/train.py                  # LoRA on Llama-2-7B (bf16 frozen base), full FT on a 1.1B shape
    python benchmarks/gpu/train.py --smoke          # the same code on a tiny shape on CPU (what CI runs)

MFU = 6 * N_trained-through * tokens/s / peak bf16 FLOP/s (H200 dense: 989 TFLOP/s); for LoRA the
frozen base still costs forward + input-gradient FLOPs, counted as 4 * N instead of 6 * N.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def shapes(smoke: bool):
    import lmzoo

    base = lmzoo.get_config("Llama-2-7B")
    if smoke:
        tiny = base.replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, intermediate_size=128, vocab_size=256,
                            head_dim=None, max_seq_len=256)
        return [("lora", tiny, 2, 64), ("full", tiny, 2, 64)]
    small = base.replace(n_layer=22, n_embd=2048, n_head=32, n_kv_head=4, intermediate_size=5632, head_dim=None)
    return [("lora", base, 8, 2048), ("full", small, 8, 2048)]


def run(method: str, cfg, rows: int, seq: int, steps: int, device: str) -> dict:
    from lmzoo.checkpoints.peft import CheckpointLayout, add_lora
    from lmzoo.nn.transformer import Transformer
    from lmzoo.train.data import IGNORE, Batch
    from lmzoo.train.loop import SFTObjective, checkpoint_blocks, param_groups

    torch.manual_seed(0)
    # the CPU form (--smoke) runs the same precision path as the GPU: a bf16 LoRA base, bf16 autocast
    dtype = torch.bfloat16 if method == "lora" else torch.float32
    with torch.device(device):
        model = Transformer(cfg).to(dtype)
    model.reset_buffers(device=device)
    model.checkpoint_layout = CheckpointLayout("llama", {})
    if method == "lora":
        add_lora(model, targets="all-linear", r=16, alpha=32)
        for m in model.modules():  # adapters train in fp32 over the bf16 base
            if hasattr(m, "lora_A"):
                m.float()
                m.base.to(dtype)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    checkpoint_blocks(model)
    opt = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-5, fused=device == "cuda")
    ids = torch.randint(0, cfg.vocab_size, (rows, seq), device=device)
    targets = torch.cat([ids[:, 1:], torch.full((rows, 1), IGNORE, device=device)], 1)
    batch, obj = Batch(ids, targets, torch.zeros_like(ids)), SFTObjective()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            total, _ = obj.loss(model, batch)
        (total / obj.units(batch)).backward()
        opt.step()
        return float(total.detach()) / obj.units(batch)

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    loss0 = step()
    step()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    tps = rows * seq * steps / dt
    flops = (6 if method == "full" else 4) * n * tps
    out = {"method": method, "params": n, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "rows": rows, "seq": seq, "tokens_per_s": round(tps, 1), "loss_first": loss0, "loss_last": loss}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        out.update(device=name, peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   mfu=round(flops / peak, 3) if peak else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny shape on CPU")
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --smoke for the CPU form")
    for method, cfg, rows, seq in shapes(a.smoke):
        print(json.dumps(run(method, cfg, rows, seq, a.steps, device)), flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
