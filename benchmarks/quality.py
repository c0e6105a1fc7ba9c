"""Quality gate for weight-only quantisation on SmolLM2-135M-Instruct: perplexity on a fixed text and
greedy agreement with the unquantised model.

    python benchmarks/quality.py [--model PATH] [--new-tokens 64]

Reference = the GGUF dequantised to float32. Variants: our int8 (per channel) and int4 (group 32)
re-quantisation of that float model, and the GGUF's own Q4_1/Q8_0 blocks kept as int4/int8 layers.
The text is fixed and ships with Python: the docstrings of a few standard-library modules.
Greedy agreement = fraction of positions where the variant's greedy token equals the reference's,
over prompts from the same text (teacher-forced on the reference continuation, so one early
divergence does not count every later token).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import copy
import io
import math

import torch

import lmzoo
from lmzoo.quant.layers import quantize
from lmzoo.tokenizer import load_tokenizer


def zen() -> str:
    """The Zen of Python (the `this` module prints it on import; keep that quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


def fixed_text() -> str:
    import argparse as a
    import json
    import pathlib
    import string

    return "\n\n".join([zen(), json.__doc__, a.__doc__, pathlib.__doc__ or "",
                        string.__doc__]).strip()


@torch.inference_mode()
def perplexity(model, ids: torch.Tensor, window: int = 512) -> float:
    nll, n = 0.0, 0
    for s in range(0, ids.shape[1] - 1, window):
        chunk = ids[:, s:s + window + 1]
        logits = model(chunk[:, :-1]).float()
        nll += torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum").item()
        n += chunk.shape[1] - 1
    return math.exp(nll / n)


@torch.inference_mode()
def greedy_agreement(ref, model, prompts: list[torch.Tensor], new_tokens: int) -> float:
    agree = total = 0
    for p in prompts:
        cont = lmzoo.generate(ref, p, max_new_tokens=new_tokens, eos_token_id=[])
        full = torch.cat([p, cont], dim=1)
        # teacher forcing on the reference continuation: next-token argmax at every position
        a = ref(full)[0, p.shape[1] - 1:-1].argmax(-1)
        b = model(full)[0, p.shape[1] - 1:-1].argmax(-1)
        agree += int((a == b).sum())
        total += a.numel()
    return agree / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    if not a.model:
        from lmzoo.checkpoints.assets import default_model_path

        a.model = default_model_path()
    tok = load_tokenizer(a.model)
    ids = torch.tensor([tok.encode(fixed_text())])
    ref = lmzoo.from_pretrained(a.model, keep_quantized=False)
    variants = {
        "float32 (reference)": ref,
        "int8 per-channel": quantize(copy.deepcopy(ref), mode="int8"),
        "int4 group 32": quantize(copy.deepcopy(ref), mode="int4", group_size=32),
        "int4 group 64": quantize(copy.deepcopy(ref), mode="int4", group_size=64),
        "GGUF blocks kept": lmzoo.from_pretrained(a.model, keep_quantized=True),
    }
    prompts = [ids[:, s:s + 24] for s in range(0, min(ids.shape[1] - 24, 24 * 8), 24)]
    ppl_ref = perplexity(ref, ids)
    print(f"# text: {ids.shape[1]} tokens; {len(prompts)} prompts x {a.new_tokens} greedy tokens")
    print("| weights | perplexity | vs float32 | greedy agreement |\n|---|---|---|---|")
    for name, m in variants.items():
        ppl = perplexity(m, ids)
        agree = 1.0 if m is ref else greedy_agreement(ref, m, prompts, a.new_tokens)
        print(f"| {name} | {ppl:.3f} | {100 * (ppl / ppl_ref - 1):+.2f}% | {100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
