"""Side-by-side speed: lmzoo vs transformers (vs litgpt when available) on the same weights and the
same shape. Each backend runs in its own subprocess, one after another, so they never compete for
cores; the table prints ratios against transformers. `lmzoo bench` and benchmarks/decode.py call
`main` here.

    lmzoo bench                                   # the default SmolLM2-135M GGUF (dequantised, fp32)
    lmzoo bench --shape llama-d768                # random Llama: d=768, 12 layers, 12/4 heads
    lmzoo bench --model DIR_OR_GGUF --quantize int8 --backends lmzoo

Per backend: load time; prefill tokens/s (one forward over --prefill-len tokens); time to first
token for a --prompt-len prompt; decode tokens/s over the remaining --new-tokens (greedy, EOS off so
every backend makes the same number of tokens); peak RSS of the process. litgpt pins versions that
clash with transformers 5, so it runs from its own environment: `benchmarks/setup_litgpt.sh`, then
LITGPT_PYTHON=.venv-litgpt/bin/python.
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
    # the CPU shape of the fast-inference issue: Llama, d=768, 12 layers, 12 heads / 4 KV heads
    "llama-d768": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       num_key_value_heads=4, intermediate_size=2048, vocab_size=32000),
    # Llama-2-7B (the GPU shape)
    "llama2-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, intermediate_size=11008, vocab_size=32000),
}


def make_checkpoint(shape: str, out: Path) -> Path:
    """Save a randomly initialised HF Llama of `shape` (all backends then load the same weights)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --- workers: each runs in a fresh process and prints one JSON line ---------------------------
def _worker_lmzoo(a) -> dict:
    import torch

    import lmzoo

    t = time.perf_counter()
    # float weights unless asked: the same numbers the other backends compute with
    model = lmzoo.from_pretrained(a.model, dtype=torch.float32, keep_quantized=a.quantize == "gguf")
    if a.quantize in ("int8", "int4"):
        from lmzoo.quant.layers import cpu_kernels, quantize

        cpu_kernels()  # compile/load outside the timed region
        quantize(model, mode=a.quantize)
    load = time.perf_counter() - t
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (a.batch, a.prompt_len), generator=g)
    long = torch.randint(0, V, (1, a.prefill_len), generator=g)
    with torch.inference_mode():
        prefill = _timed(lambda: model(long))
    # warm-up; a compiled step is specialised to the cache length, so warm up at the timed length
    lmzoo.generate(model, ids, max_new_tokens=8 if a.decode == "eager" else a.new_tokens, eos_token_id=[],
                   decode=a.decode)
    t = time.perf_counter()
    stamps = [time.perf_counter() for _ in lmzoo.stream_generate(model, ids, max_new_tokens=a.new_tokens,
                                                                 eos_token_id=[], decode=a.decode)]
    return dict(load_s=load, prefill_tok_s=a.prefill_len / prefill, ttft_s=stamps[0] - t,
                decode_tok_s=a.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]), rss_mb=_peak_rss_mb())


def _worker_transformers(a) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    p = Path(a.model)
    t = time.perf_counter()
    if p.is_file():  # transformers dequantises GGUF files to float on load
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - t
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (a.batch, a.prompt_len), generator=g)
    long = torch.randint(0, V, (1, a.prefill_len), generator=g)
    with torch.inference_mode():
        prefill = _timed(lambda: model(long))
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
    return dict(load_s=load, prefill_tok_s=a.prefill_len / prefill, ttft_s=t1,
                decode_tok_s=a.batch * (a.new_tokens - 1) / (tn - t1), rss_mb=_peak_rss_mb())


def _worker_litgpt(a) -> dict:
    """litgpt's GPT and KV cache, weights converted by litgpt's own HF-Llama converter; the decode
    loop is litgpt.generate's (input_pos + input_pos_maxp1)."""
    import torch
    from litgpt import GPT, Config
    from litgpt.scripts.convert_hf_checkpoint import copy_weights_hf_llama
    from safetensors.torch import load_file

    p = Path(a.model)
    if p.is_file():
        raise SystemExit("litgpt runs from an HF Llama checkpoint directory (use --shape)")
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
    weights: dict = {}
    for f in sorted(p.glob("*.safetensors")):
        weights.update(load_file(f))
    copy_weights_hf_llama(cfg, {}, state, weights)
    model = GPT(cfg)  # litgpt's rope/mask buffers need a real device; weights then replaced
    model.load_state_dict(state)
    model.eval()
    load = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.prompt_len), generator=g)
    long = torch.randint(0, cfg.vocab_size, (1, a.prefill_len), generator=g)
    with torch.inference_mode():
        prefill = _timed(lambda: model(long))

    @torch.inference_mode()
    def run(n: int) -> list[float]:
        model.set_kv_cache(batch_size=a.batch, max_seq_length=a.prompt_len + n, device=torch.device("cpu"))
        T = ids.shape[1]
        tok = model(ids, torch.arange(T), input_pos_maxp1=T)[:, -1].argmax(-1, keepdim=True)
        stamps = [time.perf_counter()]
        for i in range(n - 1):
            pos = T + i
            tok = model(tok, torch.tensor([pos]), input_pos_maxp1=pos + 1)[:, -1].argmax(-1, keepdim=True)
            stamps.append(time.perf_counter())
        return stamps

    run(8)  # warm-up
    t = time.perf_counter()
    stamps = run(a.new_tokens)
    return dict(load_s=load, prefill_tok_s=a.prefill_len / prefill, ttft_s=stamps[0] - t,
                decode_tok_s=a.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0]), rss_mb=_peak_rss_mb())


WORKERS = {"lmzoo": _worker_lmzoo, "transformers": _worker_transformers, "litgpt": _worker_litgpt}


def _run_backend(name: str, a, python: str) -> dict | str:
    cmd = [python, "-m", "lmzoo.tools.bench", "--worker", name, "--model", str(a.model),
           "--prompt-len", str(a.prompt_len), "--new-tokens", str(a.new_tokens),
           "--prefill-len", str(a.prefill_len), "--batch", str(a.batch), "--threads", str(a.threads)]
    if a.hf_cache:
        cmd += ["--hf-cache", a.hf_cache]
    if a.quantize and name == "lmzoo":
        cmd += ["--quantize", a.quantize]
    if name == "lmzoo":
        cmd += ["--decode", a.decode]
    root = str(Path(__file__).resolve().parents[1])  # so another environment's python finds lmzoo
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(a.threads))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1][:200]
    return json.loads(r.stdout.strip().splitlines()[-1])


def read_bandwidth_gbs(threads: int) -> float:
    """This machine's memory read bandwidth right now over 512 MB, the bound for decode: the faster
    of a sum over a tensor (one stream a thread) and, where lmzoo's kernels build, its multi-stream
    prefetching read (`stream_read`, cpu.cpp: ~30% more on the host of benchmarks/RESULTS.md)."""
    import torch

    from lmzoo.quant.kernels import cpu_kernels

    torch.set_num_threads(threads)
    x = torch.ones(128 * 1024 * 1024)
    reads = [lambda: x.sum()]
    k = cpu_kernels()
    if k is not None:
        b = x.view(torch.uint8)
        reads.append(lambda: k.stream_read(b, 4))
    best = 1e9
    for read in reads:
        read()
        best = min(best, _timed(read, repeat=5))
    return x.numel() * 4 / best / 1e9


def format_table(results: dict, a) -> str:
    lines = [
        f"# {time.strftime('%Y-%m-%d')} {platform.machine()} {os.cpu_count()} cores, threads={a.threads}, "
        f"memory read {a.bandwidth:.1f} GB/s; "
        f"model={a.shape or a.model}; batch={a.batch} prompt={a.prompt_len} new={a.new_tokens} "
        f"prefill={a.prefill_len}; fp32 greedy" + (f"; lmzoo {a.quantize}" if a.quantize else "")
        + (f"; lmzoo decode={a.decode}" if a.decode != "eager" else ""),
        "| backend | load s | prefill tok/s | TTFT ms | decode tok/s | decode vs transformers | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    base = results.get("transformers")
    for b, r in results.items():
        if isinstance(r, str):
            lines.append(f"| {b} | failed: {r} | | | | | |")
            continue
        ratio = f"{r['decode_tok_s'] / base['decode_tok_s']:.2f}x" if isinstance(base, dict) else "n/a"
        lines.append(f"| {b} | {r['load_s']:.2f} | {r['prefill_tok_s']:.0f} | {r['ttft_s'] * 1000:.0f} | "
                     f"{r['decode_tok_s']:.1f} | {ratio} | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lmzoo bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF checkpoint dir or .gguf (default: SmolLM2-135M-Instruct GGUF)")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="benchmark a random checkpoint of this shape")
    ap.add_argument("--backends", default="transformers,lmzoo,litgpt",
                    help="comma-separated; litgpt runs only when LITGPT_PYTHON is set")
    ap.add_argument("--quantize", choices=["int8", "int4", "gguf"],
                    help="lmzoo only: quantise weights (int8 per channel, int4 group 32), or keep a GGUF's own blocks")
    ap.add_argument("--decode", choices=["eager", "static", "compiled"], default="eager",
                    help="lmzoo only: decode path (compiled = torch.compile of fixed-shape steps)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--hf-cache", default=None, help="transformers cache_implementation, e.g. static")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    for k in ("batch", "prompt_len", "new_tokens", "prefill_len", "threads"):
        if getattr(a, k) < 1 or (k == "new_tokens" and a.new_tokens < 2):
            print(f"lmzoo bench: error: --{k.replace('_', '-')} must be >= {2 if k == 'new_tokens' else 1}, "
                  f"got {getattr(a, k)}", file=sys.stderr)
            return 2
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(WORKERS[a.worker](a)))
        return 0
    unknown = [b for b in a.backends.split(",") if b not in WORKERS]
    if unknown:
        print(f"lmzoo bench: error: unknown backends {unknown}; choose from {sorted(WORKERS)}", file=sys.stderr)
        return 2
    tmp = None
    if a.shape:
        tmp = tempfile.TemporaryDirectory()
        a.model = make_checkpoint(a.shape, Path(tmp.name) / a.shape)
    elif not a.model:
        from lmzoo.checkpoints.assets import default_model_path

        a.model = default_model_path()
    elif not Path(a.model).exists():
        print(f"lmzoo bench: error: model path {a.model!r} does not exist", file=sys.stderr)
        return 2
    a.bandwidth = read_bandwidth_gbs(a.threads)
    results = {}
    for b in a.backends.split(","):
        if b == "litgpt":
            if os.environ.get("LITGPT_PYTHON"):
                results[b] = _run_backend(b, a, os.environ["LITGPT_PYTHON"])
            continue
        results[b] = _run_backend(b, a, sys.executable)
    print(json.dumps(results, indent=2) if a.json else format_table(results, a))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
