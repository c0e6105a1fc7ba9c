"""Side-by-side generation speed: lmzoo vs transformers (vs litgpt when available) on the same
weights and the same shape, each backend in its own subprocess, run one after another so they never
compete for cores. Prints a table with ratios against transformers.

    python benchmarks/decode.py                       # the default SmolLM2-135M GGUF (dequantised)
    python benchmarks/decode.py --shape llama-d768    # random Llama (d=768, 12 layers, GQA 12/4)
    python benchmarks/decode.py --model DIR_OR_GGUF --prompt-len 32 --new-tokens 128

Measured per backend: load time, time to first token (prefill of the prompt + 1 token), decode
tokens/s over the remaining new tokens (greedy, EOS disabled so every run makes the same number of
tokens), and peak RSS of the process. litgpt needs its own environment (its pins conflict with
transformers 5): set LITGPT_PYTHON to a python that has litgpt installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # the shape named in the fast-inference issue: Llama, d=768, 12 layers, 12 heads / 4 KV heads
    "llama-d768": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
}


def make_checkpoint(shape: str, out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    return out


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- workers: each runs in a fresh process and prints one JSON line ---------------------------
def worker_lmzoo(a) -> dict:
    import torch

    import lmzoo

    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    model = lmzoo.from_pretrained(a.model, dtype=torch.float32)
    load = time.perf_counter() - t
    ids = torch.randint(0, model.config.vocab_size, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    lmzoo.generate(model, ids, max_new_tokens=8, eos_token_id=[])  # warm-up
    t = time.perf_counter()
    stamps = []
    for _ in lmzoo.stream_generate(model, ids, max_new_tokens=a.new_tokens, eos_token_id=[]):
        stamps.append(time.perf_counter())
    return dict(load_s=load, ttft_s=stamps[0] - t,
                decode_tok_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]), rss_mb=peak_rss_mb())


def worker_transformers(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    p = Path(a.model)
    t = time.perf_counter()
    if p.is_file():
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - t
    V = model.config.vocab_size
    ids = torch.randint(0, V, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    if a.hf_cache:
        kw["cache_implementation"] = a.hf_cache

    def run(n: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        return time.perf_counter() - t

    run(8)  # warm-up
    t1 = run(1)
    tn = run(a.new_tokens)
    return dict(load_s=load, ttft_s=t1, decode_tok_s=(a.new_tokens - 1) / (tn - t1), rss_mb=peak_rss_mb())


def worker_litgpt(a) -> dict:
    """litgpt's GPT with its own KV cache, loaded from the same HF Llama checkpoint through
    litgpt's own weight converter; decode loop as litgpt.generate does it (input_pos + maxp1)."""
    import torch
    from litgpt import GPT, Config
    from litgpt.scripts.convert_hf_checkpoint import copy_weights_hf_llama
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    p = Path(a.model)
    if p.is_file():
        raise SystemExit("litgpt worker needs an HF checkpoint directory (use --shape)")
    t = time.perf_counter()
    hf = json.loads((p / "config.json").read_text())
    cfg = Config(
        name="bench", block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
        padded_vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"], n_query_groups=hf["num_key_value_heads"],
        intermediate_size=hf["intermediate_size"], bias=False, norm_class_name="RMSNorm",
        mlp_class_name="LLaMAMLP", rotary_percentage=1.0, parallel_residual=False,
        rope_base=int(hf.get("rope_theta", 10000)), norm_eps=hf["rms_norm_eps"],
    )
    state: dict = {}
    weights = {}
    for f in sorted(p.glob("*.safetensors")):
        weights.update(load_file(f))
    copy_weights_hf_llama(cfg, {}, state, weights)
    model = GPT(cfg)  # litgpt's rope/mask buffers need a real device; weights then replaced
    model.load_state_dict(state)
    model.eval()
    load = time.perf_counter() - t
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt_len), generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def run(n: int) -> list[float]:
        model.set_kv_cache(batch_size=1, max_seq_length=a.prompt_len + n, device=torch.device("cpu"))
        T = ids.shape[1]
        logits = model(ids, torch.arange(T), input_pos_maxp1=T)
        stamps = []
        tok = logits[:, -1].argmax(-1, keepdim=True)
        stamps.append(time.perf_counter())
        for i in range(n - 1):
            pos = T + i
            logits = model(tok, torch.tensor([pos]), input_pos_maxp1=pos + 1)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.perf_counter())
        return stamps

    run(8)  # warm-up
    t = time.perf_counter()
    stamps = run(a.new_tokens)
    return dict(load_s=load, ttft_s=stamps[0] - t,
                decode_tok_s=(len(stamps) - 1) / (stamps[-1] - stamps[0]), rss_mb=peak_rss_mb())


WORKERS = {"lmzoo": worker_lmzoo, "transformers": worker_transformers, "litgpt": worker_litgpt}


def run_backend(name: str, a, python: str = sys.executable) -> dict | str:
    cmd = [python, __file__, "--worker", name, "--model", str(a.model), "--prompt-len", str(a.prompt_len),
           "--new-tokens", str(a.new_tokens), "--threads", str(a.threads)]
    if a.hf_cache:
        cmd += ["--hf-cache", a.hf_cache]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF checkpoint dir or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="build a random checkpoint of this shape")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--hf-cache", default=None, help="transformers cache_implementation, e.g. static")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(WORKERS[a.worker](a)))
        return
    tmp = None
    if a.shape:
        tmp = tempfile.TemporaryDirectory()
        a.model = make_checkpoint(a.shape, Path(tmp.name) / a.shape)
    elif not a.model:
        from lmzoo.assets import default_model_path

        a.model = default_model_path()
    backends = ["transformers", "lmzoo"]
    results = {b: run_backend(b, a) for b in backends}
    litgpt_python = os.environ.get("LITGPT_PYTHON")
    if litgpt_python:
        results["litgpt"] = run_backend("litgpt", a, python=litgpt_python)
    print(f"# {time.strftime('%Y-%m-%d')}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} cores  threads={a.threads}")
    print(f"# model={a.model if not a.shape else a.shape}  prompt={a.prompt_len}  new={a.new_tokens}  fp32 greedy")
    base = results.get("transformers")
    print(f"| backend | load s | TTFT ms | decode tok/s | vs transformers | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for b, r in results.items():
        if isinstance(r, str):
            print(f"| {b} | failed: {r} | | | | |")
            continue
        ratio = r["decode_tok_s"] / base["decode_tok_s"] if isinstance(base, dict) else float("nan")
        print(f"| {b} | {r['load_s']:.2f} | {r['ttft_s'] * 1000:.0f} | {r['decode_tok_s']:.1f} | "
              f"{ratio:.2f}x | {r['rss_mb']:.0f} |")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
