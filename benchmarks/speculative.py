"""Speculative decoding on SmolLM2-135M-Instruct: the float32 target with a cheaper draft (the same
model with int4 weights), greedy. Output equality with plain greedy decoding is asserted here too;
acceptance rate and speed-up are printed.

    python benchmarks/speculative.py [--k 4] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import lmzoo
from lmzoo.quant.layers import quantize
from lmzoo.runtime.speculative import SpeculativeStats, speculative_generate
from lmzoo.tokenizer import load_tokenizer

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
           "Explain what a hash table is.", "List three uses of Python."]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 6])
    a = ap.parse_args()
    if not a.model:
        from lmzoo.checkpoints.assets import default_model_path

        a.model = default_model_path()
    tok = load_tokenizer(a.model)
    target = lmzoo.from_pretrained(a.model, keep_quantized=False)
    drafts = {"int8 copy": quantize(copy.deepcopy(target), mode="int8"),
              "int4 copy": quantize(copy.deepcopy(target), mode="int4")}
    prompts = [torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]),
                                        add_special_tokens=False)]) for p in PROMPTS]
    eos = tok.eos_token_ids
    lmzoo.generate(target, prompts[0], max_new_tokens=4)  # warm-up
    t = time.perf_counter()
    refs = [lmzoo.generate(target, p, max_new_tokens=a.new_tokens, eos_token_id=eos) for p in prompts]
    base = time.perf_counter() - t
    n_tok = sum(r.shape[1] for r in refs)
    print(f"# {len(prompts)} chat prompts, greedy, up to {a.new_tokens} tokens; plain decoding "
          f"{n_tok / base:.1f} tok/s")
    print("| draft | k | acceptance | tokens / target pass | tok/s | speed-up | identical |")
    print("|---|---|---|---|---|---|---|")
    for name, draft in drafts.items():
        for k in a.k:
            st = SpeculativeStats()
            t = time.perf_counter()
            outs = [speculative_generate(target, draft, p, max_new_tokens=a.new_tokens, k=k, eos_token_id=eos,
                                         stats=st) for p in prompts]
            dt = time.perf_counter() - t
            same = all(torch.equal(o, r) for o, r in zip(outs, refs))
            print(f"| {name} | {k} | {100 * st.acceptance_rate:.0f}% | {st.tokens_per_pass:.2f} | "
                  f"{n_tok / dt:.1f} | {base / dt:.2f}x | {same} |")


if __name__ == "__main__":
    main()
