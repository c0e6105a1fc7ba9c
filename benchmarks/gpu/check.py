"""GPU check for inference (issue 16 item 4), sized for one H200 in a few minutes:

    python benchmarks/gpu/check.py parity      # every tiny parity case of tests/test_parity.py on CUDA, fp32 and bf16
    python benchmarks/gpu/check.py decode      # Llama-2-7B shape, random weights: bf16 / int8 / int4 decode
                                               # (eager and compiled = CUDA graphs) and a 4 x 2048 bf16 prefill
    python benchmarks/gpu/check.py ... --smoke  # the same code on CPU with tiny shapes (what CI runs)

Prints one JSON line per measurement: tok/s, the HBM bound (the weight bytes one step reads / 4.8 TB/s
for an H200; the cache of <= 256 tokens adds < 1%) and its fraction, prefill TFLOP/s and MFU against the dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
HBM = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


def spec(table: dict, device: str):
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in table.items() if k in name), None)


def parity(device: str, smoke: bool) -> None:
    """lmzoo on `device` against transformers on CPU in float32 (the same tiny random checkpoints the
    CPU parity suite builds): fp32 max abs diff <= 1e-4, bf16 within 5% of the logits' range, and
    greedy tokens equal in fp32."""
    sys.path.insert(0, str(ROOT))
    import lmzoo
    from tests.helpers import greedy_ours, greedy_ref
    from tests.test_parity import CASES, V, build_reference

    cases = sorted(CASES)[:3] if smoke else sorted(CASES)
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    for name in cases:
        with tempfile.TemporaryDirectory() as d:
            ref = build_reference(name, Path(d))
            with torch.no_grad():
                want = ref(ids).logits.float()
            for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.05)):
                m = lmzoo.from_pretrained(d, dtype=dtype, device=device)
                with torch.no_grad():
                    got = m(ids.to(device)).float().cpu()
                err = (got - want).abs().max().item()
                bound = tol if dtype == torch.float32 else tol * want.abs().max().item()
                row = {"case": name, "dtype": str(dtype).split(".")[1], "max_abs_diff": err, "ok": err <= bound}
                if dtype == torch.float32:
                    g = greedy_ours(m, ids[:1].to(device), 8).cpu()
                    row["greedy_equal"] = bool(torch.equal(g, greedy_ref(ref, ids[:1], 8)))
                    row["ok"] = row["ok"] and row["greedy_equal"]
                print(json.dumps(row), flush=True)
                del m


def random_llama(cfg, device: str, dtype):
    from lmzoo.nn.transformer import Transformer

    with torch.device("meta"):
        m = Transformer(cfg)
    m = m.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.02)
    m.reset_buffers(device=device)
    return m.eval()


def decode(device: str, smoke: bool) -> None:
    import lmzoo
    from lmzoo.quant.layers import quantize

    base = lmzoo.get_config("Llama-2-7B")
    cfg = base.replace(n_layer=2, n_embd=128, n_head=4, n_kv_head=4, intermediate_size=256, vocab_size=512,
                       head_dim=None) if smoke else base
    prompt, new = (16, 16) if smoke else (128, 128)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    hbm, peak = spec(HBM, device), spec(PEAK_BF16, device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for quant in (None, "int8", "int4"):
        m = random_llama(cfg, device, dtype)
        if quant:
            quantize(m, mode=quant)
        emb = m.embed.weight  # a lookup: one row read per token
        weight_bytes = sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers())
                           if t is not emb and t.dim() >= 2)
        ids = torch.randint(0, cfg.vocab_size, (1, prompt), device=device)
        ref = None
        for mode in ("eager", "compiled"):
            eng_kwargs = dict(max_running=1, max_len=prompt + new, decode=mode)
            try:
                eng = lmzoo.Engine(m, **eng_kwargs)
                for _ in range(2):  # warm-up (compiles on the first)
                    eng.submit(lmzoo.Request(prompt=ids[0].tolist(), max_tokens=new, stop_token_ids=[]))
                    toks, t_first = [], None
                    sync()
                    t0 = time.perf_counter()
                    while eng.has_work:
                        for e in eng.step():
                            if t_first is None:
                                sync()
                                t_first = time.perf_counter()
                            if e.token is not None:
                                toks.append(e.token)
                    sync()
                    t1 = time.perf_counter()
            except Exception as e:  # report and go on: one broken mode must not hide the others
                print(json.dumps({"weights": quant or "bf16", "decode": mode, "error": f"{type(e).__name__}: {e}"}))
                continue
            tps = (len(toks) - 1) / (t1 - t_first)
            row = {"weights": quant or str(dtype).split(".")[1], "decode": mode, "tok_s": round(tps, 1),
                   "tokens_equal_eager": ref is None or toks == ref, "weight_gb": round(weight_bytes / 1e9, 2)}
            if hbm:
                row["hbm_bound_tok_s"] = round(hbm / weight_bytes, 1)
                row["fraction_of_bound"] = round(tps * weight_bytes / hbm, 3)
            ref = ref or toks
            print(json.dumps(row), flush=True)
        del m
        if device == "cuda":
            torch.cuda.empty_cache()
    # prefill: 4 x 2048 bf16 (4 x 64 in the smoke form), one forward, last position's logits only
    m = random_llama(cfg, device, dtype)
    B, T = (4, 64) if smoke else (4, 2048)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    with torch.inference_mode():
        for _ in range(2):
            m(ids, last_only=True)
        sync()
        t0 = time.perf_counter()
        m(ids, last_only=True)
        sync()
    dt = time.perf_counter() - t0
    n = sum(p.numel() for p in m.parameters()) - cfg.vocab_size * cfg.n_embd  # the embedding is a lookup
    attn = 2 * cfg.n_layer * B * T * T * cfg.n_embd  # QK^T and PV, causal half of 2 * 2
    flops = 2 * n * B * T + attn
    row = {"prefill": f"{B}x{T}", "s": round(dt, 4), "tflops": round(flops / dt / 1e12, 1)}
    if peak:
        row["mfu"] = round(flops / dt / peak, 3)
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["parity", "decode"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
    a = ap.parse_args()
    device = "cpu" if a.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device; run with --smoke for the CPU form")
    (parity if a.what == "parity" else decode)(device, a.smoke)


if __name__ == "__main__":
    main()
