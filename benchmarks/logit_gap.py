"""Who computes the GGUF's math most exactly (issue 16's greedy agreement)? Every backend against one
float64 reference of the same weights.

    LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/logit_gap.py [--new 128] [--forced 32]

The reference is transformers in float64 on the default GGUF dequantised to an HF checkpoint (`lmzoo
convert --to hf --type float32`: the file's own numbers, exactly). For the eight chat questions of
vs_llamacpp.py (through the chat template), each backend's greedy continuation is compared with the
reference's (tokens equal before the first difference), and, teacher-forced along the reference's
continuation (so every backend sees the same ids at every step), its next-token logits: mean |logit
difference| over the vocabulary, and how often its argmax is the reference's. Backends: transformers
float32, lmzoo with float activations and with 8-bit activations (float32 and float16 KV caches), and
llama.cpp (llama-cpp-python, 2 threads) with its default float16 KV cache, with a float32 one, on one
thread and with the prompt in 8-token batches; then the pairs a user compares directly — llama.cpp
against itself with one setting changed, and lmzoo against llama.cpp.

A 135M model's greedy path on chat questions meets near-ties (top-2 logits within a few hundredths)
every few dozen tokens; there, any change of arithmetic order can pick the other token and the two texts
part. Agreement with llama.cpp is measured against how far llama.cpp moves when one of its own settings
changes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


# --- one backend: feed(ids) -> next-token logits after them, on top of what was fed since reset() ---
def continuations(session, prompts, reference, new: int, forced: int) -> dict:
    """Greedy `new` tokens after each prompt, and the logits teacher-forced along `reference`'s tokens
    (the prompt's own logits, then one per forced token: `forced` rows); no reference: along its own."""
    out = {}
    for i, ids in enumerate(prompts):
        session.reset()
        logits, toks = session.feed(ids), []
        for _ in range(new):
            toks.append(int(np.argmax(logits)))
            if len(toks) < new:
                logits = session.feed([toks[-1]])
        out[f"t{i}"] = np.array(toks)
        session.reset()
        rows = [session.feed(ids)]
        for t in (toks if reference is None else reference[f"t{i}"])[: forced - 1]:
            rows.append(session.feed([int(t)]))
        out[f"l{i}"] = np.stack(rows).astype(np.float32)
    return out


class LlamaCpp:
    def __init__(self, gguf: str, kv: str, threads: str = "2", batch: str = "512") -> None:
        from llama_cpp import Llama

        types = {"float16": 1, "float32": 0}  # GGML_TYPE_F16 / GGML_TYPE_F32
        self.llm = Llama(model_path=gguf, n_ctx=512, n_threads=int(threads), n_threads_batch=int(threads),
                         n_batch=int(batch), n_ubatch=int(batch), verbose=False, type_k=types[kv], type_v=types[kv])

    def reset(self) -> None:
        self.llm.reset()

    def feed(self, ids) -> np.ndarray:
        self.llm.eval(list(ids))  # the binding keeps the last position's logits only
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),)).copy()


class Lmzoo:
    def __init__(self, gguf: str, activations: str, kv: str) -> None:
        import torch

        import lmzoo
        from lmzoo.runtime.cache import KVCache

        self.torch, self.KVCache, self.kv = torch, KVCache, getattr(torch, kv)
        self.model = lmzoo.from_pretrained(gguf, activations=activations)

    def reset(self) -> None:
        self.cache = self.KVCache(self.model, 1, 512, dtype=self.kv)

    def feed(self, ids) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.tensor([list(ids)]), cache=self.cache, last_only=True)[0, -1].double().numpy()


class Transformers:
    def __init__(self, hf_dir: str, dtype: str) -> None:
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype))

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def feed(self, ids) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([list(ids)]), past_key_values=self.cache, use_cache=True)
        return out.logits[0, -1].double().numpy()


BACKENDS = {  # name: (python, constructor and its arguments; "{gguf}" / "{hf}" filled in)
    "transformers float64 (reference)": ("self", "Transformers", ["{hf}", "float64"]),
    "transformers float32": ("self", "Transformers", ["{hf}", "float32"]),
    "lmzoo float, float32 cache": ("self", "Lmzoo", ["{gguf}", "float", "float32"]),
    "lmzoo float, float16 cache": ("self", "Lmzoo", ["{gguf}", "float", "float16"]),
    "lmzoo q8, float32 cache": ("self", "Lmzoo", ["{gguf}", "q8", "float32"]),
    "lmzoo q8, float16 cache": ("self", "Lmzoo", ["{gguf}", "q8", "float16"]),
    "llama.cpp, float16 cache (its default)": ("llamacpp", "LlamaCpp", ["{gguf}", "float16"]),
    "llama.cpp, float32 cache": ("llamacpp", "LlamaCpp", ["{gguf}", "float32"]),
    "llama.cpp, 1 thread": ("llamacpp", "LlamaCpp", ["{gguf}", "float16", "1"]),
    "llama.cpp, prompt in 8-token batches": ("llamacpp", "LlamaCpp", ["{gguf}", "float16", "2", "8"]),
}
PAIRS = [("llama.cpp, float16 cache (its default)", "llama.cpp, float32 cache"),
         ("llama.cpp, float16 cache (its default)", "llama.cpp, 1 thread"),
         ("llama.cpp, float16 cache (its default)", "llama.cpp, prompt in 8-token batches"),
         ("llama.cpp, float16 cache (its default)", "lmzoo q8, float16 cache"),
         ("llama.cpp, float16 cache (its default)", "lmzoo float, float32 cache"),
         ("lmzoo float, float32 cache", "lmzoo q8, float32 cache")]


def worker(name: str, files: str, prompts_json: str, ref_npz: str, out: str, new: int, forced: int) -> None:
    _, cls, args = BACKENDS[name]
    session = globals()[cls](*[a.format(**json.loads(files)) for a in args])
    reference = np.load(ref_npz) if ref_npz != "-" else None
    np.savez(out, **continuations(session, json.loads(Path(prompts_json).read_text()), reference, new, forced))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=128, help="greedy tokens per question")
    ap.add_argument("--forced", type=int, default=32, help="teacher-forced steps per question")
    ap.add_argument("--worker", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        w = a.worker
        return worker(w[0], w[1], w[2], w[3], w[4], int(w[5]), int(w[6]))
    exe = os.environ.get("LLAMACPP_PYTHON")
    if not exe:
        raise SystemExit("set LLAMACPP_PYTHON to a python with llama-cpp-python (benchmarks/setup_llamacpp.sh)")
    sys.path.insert(0, str(Path(__file__).parent))
    from vs_llamacpp import CHAT_PROMPTS, agreement

    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    gguf = default_model_path()
    tmp = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "lmzoo", "convert", str(gguf), "--to", "hf", "--type", "float32",
                    "--out", str(tmp / "hf"), "-q"], check=True)
    tok = load_tokenizer(gguf)
    (tmp / "prompts.json").write_text(json.dumps([tok.encode_chat([{"role": "user", "content": q}])
                                                  for q in CHAT_PROMPTS]))
    files = json.dumps({"gguf": str(gguf), "hf": str(tmp / "hf")})
    runs = {}
    for i, (name, (python, _, _)) in enumerate(BACKENDS.items()):
        ref = "-" if i == 0 else str(tmp / "r0.npz")  # the reference first: the others are forced along it
        cmd = [exe if python == "llamacpp" else sys.executable, __file__, "--worker", name, files,
               str(tmp / "prompts.json"), ref, str(tmp / f"r{i}.npz"), str(a.new), str(a.forced)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        runs[name] = np.load(tmp / f"r{i}.npz")
    n = len(CHAT_PROMPTS)
    ref = runs.pop("transformers float64 (reference)")
    print(f"# {n} chat questions; greedy: tokens equal to the float64 reference's before the first difference "
          f"(of {a.new}); forced: {a.forced} steps along the reference's tokens")
    print("| backend | greedy tokens equal to the reference's | mean |logit diff| | argmax = reference's |")
    print("|---|---|---|---|")
    for name, r in runs.items():
        eq = [agreement(r[f"t{i}"], ref[f"t{i}"]) for i in range(n)]
        gap = np.mean([np.abs(r[f"l{i}"] - ref[f"l{i}"]).mean() for i in range(n)])
        hit = sum(int((r[f"l{i}"].argmax(-1) == ref[f"t{i}"][: a.forced]).sum()) for i in range(n))
        print(f"| {name} | {', '.join(map(str, eq))} | {gap:.1e} | {hit}/{n * a.forced} |")
    print("\n| pair | greedy tokens equal | mean |logit diff| (forced along the reference) |")
    print("|---|---|---|")
    for x, y in PAIRS:
        eq = [agreement(runs[x][f"t{i}"], runs[y][f"t{i}"]) for i in range(n)]
        gap = np.mean([np.abs(runs[x][f"l{i}"] - runs[y][f"l{i}"]).mean() for i in range(n)])
        print(f"| {x} vs {y} | {', '.join(map(str, eq))} | {gap:.1e} |")


if __name__ == "__main__":
    main()
