"""How far lmzoo's next-token logits are from llama.cpp's on the same GGUF (issue 16's greedy
agreement): the eight chat questions of vs_llamacpp.py, llama.cpp's greedy continuation teacher-forced
into lmzoo (so both see the same ids at every step), mean |logit difference| over the vocabulary per
step, for lmzoo with float and with 8-bit activations (each with a float32 and a float16 KV cache),
and between lmzoo's own float and 8-bit runs.

    LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/logit_gap.py [--steps 12]

If two 8-bit implementations differed only in float rounding order, their gap would be far below the
gap between float and 8-bit activations; when it is as large, tiny differences flip activation codes
and the runs diverge layer by layer, and greedy agreement needs the other side's arithmetic bit for bit.
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

LLAMACPP_WORKER = """
import json, sys, numpy as np
from llama_cpp import Llama
path, pj, out, N = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_threads_batch=2, n_batch=512, verbose=False)
V, res = llm.n_vocab(), {}
for i, ids in enumerate(json.load(open(pj))):
    llm.reset(); llm.eval(ids); ls, toks = [], []
    for _ in range(N):
        l = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(V,)).copy()
        t = int(np.argmax(l)); ls.append(l); toks.append(t); llm.eval([t])
    res[f"l{i}"], res[f"t{i}"] = np.stack(ls), np.array(toks)
np.savez(out, **res)
"""


def lmzoo_logits(path: Path, prompts, ref, activations: str, kv_dtype) -> list[np.ndarray]:
    import torch

    import lmzoo
    from lmzoo.runtime.cache import KVCache

    model = lmzoo.from_pretrained(path, activations=activations)
    out = []
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            cache, x, ls = KVCache(model, 1, 512, dtype=kv_dtype), torch.tensor([ids]), []
            for t in ref[f"t{i}"]:
                ls.append(model(x, cache=cache, last_only=True)[0, -1].numpy())
                x = torch.tensor([[int(t)]])
            out.append(np.stack(ls))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    a = ap.parse_args()
    exe = os.environ.get("LLAMACPP_PYTHON")
    if not exe:
        raise SystemExit("set LLAMACPP_PYTHON to a python with llama-cpp-python (benchmarks/setup_llamacpp.sh)")
    import torch

    torch.set_num_threads(2)
    sys.path.insert(0, str(Path(__file__).parent))
    from vs_llamacpp import CHAT_PROMPTS

    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    path = default_model_path()
    tok = load_tokenizer(path)
    prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in CHAT_PROMPTS]
    tmp = Path(tempfile.mkdtemp())
    (tmp / "prompts.json").write_text(json.dumps(prompts))
    (tmp / "worker.py").write_text(LLAMACPP_WORKER)
    subprocess.run([exe, str(tmp / "worker.py"), str(path), str(tmp / "prompts.json"), str(tmp / "lc.npz"),
                    str(a.steps)], check=True)
    ref = np.load(tmp / "lc.npz")
    runs = {(act, kv): lmzoo_logits(path, prompts, ref, act, getattr(torch, kv))
            for act in ("float", "q8") for kv in ("float32", "float16")}
    print(f"# {len(prompts)} chat questions x {a.steps} teacher-forced steps; mean |logit difference| over the "
          "vocabulary (first step: the prompt's own logits)")
    print("| pair | all steps | first step | argmax equal |")
    print("|---|---|---|---|")

    def row(name, xs, ys, toks=None):
        d = [np.abs(x - y).mean(-1) for x, y in zip(xs, ys)]
        eq = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(xs, ys))
        print(f"| {name} | {np.mean(d):.3f} | {np.mean([v[0] for v in d]):.3f} | {eq}/{sum(len(x) for x in xs)} |")

    lc = [ref[f"l{i}"] for i in range(len(prompts))]
    for (act, kv), xs in runs.items():
        row(f"lmzoo {act} activations, {kv} cache vs llama.cpp", xs, lc)
    row("lmzoo float vs lmzoo q8 (float32 caches)", runs[("float", "float32")], runs[("q8", "float32")])


if __name__ == "__main__":
    main()
