"""GGUF out, checked with llama.cpp itself (issue 10 item 3): lmzoo writes a file, llama.cpp loads it,
and both run the same prompt ids — greedy tokens and the last position's logits are compared, and
llama.cpp's tokenizer is compared with lmzoo's on a few texts.

    bash benchmarks/setup_llamacpp.sh          # once: llama-cpp-python from its sdist (~15-25 min)
    LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/gguf_llamacpp_check.py \
        [--cases smollm2-q8_0,smollm2-f16,qwen2,phi3,...] [--new 16] [--out DIR]

Cases: `smollm2-<type>` re-exports the real SmolLM2-135M-Instruct GGUF (Q4_1) as <type>;
the family names write a tiny random transformers model of that family (SmolLM2's vocabulary, so
llama.cpp has a tokenizer) through lmzoo.from_pretrained -> lmzoo.save_gguf. llama.cpp runs in a
separate process under LLAMACPP_PYTHON (its low-level eval, logits of every position).
Prints one JSON line per case and a table. Not run in CI: llama.cpp takes too long to build there.
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
TEXTS = ["The capital of France is", "def fib(n):\n    return n if n < 2 else", "你好，世界！", "  spaces\tand\ttabs",
         "<|im_start|>user\nHi<|im_end|>\n"]
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def worker(path: str, ids: list[int], new: int) -> dict:
    """Runs under LLAMACPP_PYTHON: llama.cpp on the file."""
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=len(ids) + new + 8, n_threads=2, n_batch=512, logits_all=True, verbose=False)
    llm.eval(ids)
    last = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64).tolist()
    out = []
    for _ in range(new):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    tokens = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in TEXTS]
    return {"last": last, "greedy": out, "tokens": tokens}


def tiny_family(key: str, vocab: int):
    """A tiny random transformers model of family `key` (tests/checkpoints/test_gguf_arches.MODELS)."""
    import torch
    import transformers as tf

    sys.path.insert(0, str(ROOT))
    from tests.checkpoints.test_gguf_arches import MODELS
    from tests.helpers import perturb_

    cfg = MODELS[key]()
    for k in ("vocab_size",):
        setattr(cfg, k, vocab)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    torch.manual_seed(0)
    return perturb_(tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager"), scale=0.05).eval()


def build(case: str, out: Path, smollm2: Path) -> Path:
    import torch

    import lmzoo

    p = out / f"{case}.gguf"
    if case.startswith("smollm2-"):
        m = lmzoo.from_pretrained(smollm2, keep_quantized=False, cpu_kernels=False)
        lmzoo.save_gguf(m, None, p, case.split("-", 1)[1], overwrite=True)
        return p
    ref = tiny_family(case, vocab=49152)
    ref.save_pretrained(out / case)
    m = lmzoo.from_pretrained(out / case, dtype=torch.float32, cpu_kernels=False)
    # a neutral general.name: llama.cpp applies Phi-3's token-attribute fix to any model *named* phi3,
    # which fails on a vocabulary without Phi-3's special tokens (SmolLM2's here)
    lmzoo.save_gguf(m, smollm2, p, "f32", overwrite=True, name="lmzoo tiny random model")
    return p


def ours(path: Path, ids: list[int], new: int) -> dict:
    import torch

    import lmzoo
    from lmzoo.tokenizer import load_tokenizer

    m = lmzoo.from_pretrained(path)
    x = torch.tensor([ids])
    with torch.no_grad():
        last = m(x)[0, -1].double()
        out, cur = [], x
        for _ in range(new):  # plain greedy, full recompute: no cache involved in the comparison
            tok = int(m(cur)[0, -1].argmax())
            out.append(tok)
            cur = torch.cat([cur, torch.tensor([[tok]])], dim=1)
    tok = load_tokenizer(path)
    return {"last": last, "greedy": out, "tokens": [tok.encode(t, add_special_tokens=False) for t in TEXTS]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="smollm2-q8_0,smollm2-f16,smollm2-q4_0,qwen2moe,qwen3moe,phi3,gptneox,falcon,"
                    "bloom,stablelm2,gpt2,gptj,deepseek2-v3,mixtral,llama3.1")
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", nargs=2, metavar=("GGUF", "IDS_JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], json.loads(a.worker[1]), a.new)))
        return
    python = os.environ.get("LLAMACPP_PYTHON")
    if not python:
        raise SystemExit("set LLAMACPP_PYTHON to a python with llama-cpp-python (bash benchmarks/setup_llamacpp.sh)")
    import torch

    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    smollm2 = default_model_path()
    ids = load_tokenizer(smollm2).encode(PROMPT, add_special_tokens=False)
    out = a.out or Path(tempfile.mkdtemp(prefix="lmzoo-gguf-check-"))
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in a.cases.split(","):
        p = build(case, out, smollm2)
        r = subprocess.run([python, __file__, "--worker", str(p), json.dumps(ids), "--new", str(a.new)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if r.returncode != 0:
            row = {"case": case, "error": r.stderr.strip().splitlines()[-1:] or ["?"]}
        else:
            theirs = json.loads(r.stdout.strip().splitlines()[-1])
            mine = ours(p, ids, a.new)
            lt, lo = torch.tensor(theirs["last"]), mine["last"]
            same = 0
            for x, y in zip(mine["greedy"], theirs["greedy"]):
                if x != y:
                    break
                same += 1
            row = {"case": case, "greedy_agree": f"{same}/{a.new}",
                   "last_logits_max_abs_diff": round(float((lt - lo).abs().max()), 5),
                   "last_logits_scale": round(float(lo.abs().max()), 3),
                   "argmax_equal": int(lt.argmax()) == int(lo.argmax()),
                   "tokenizer_equal": f"{sum(x == y for x, y in zip(mine['tokens'], theirs['tokens']))}/{len(TEXTS)}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| case | greedy agree | last logits max abs diff (scale) | tokenizer |\n|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | error: {r['error'][0][:80]} | | |")
        else:
            print(f"| {r['case']} | {r['greedy_agree']} | {r['last_logits_max_abs_diff']} ({r['last_logits_scale']}) "
                  f"| {r['tokenizer_equal']} |")


if __name__ == "__main__":
    main()
