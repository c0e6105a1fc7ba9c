"""The seeds' hardware figures recomputed by lmzoo.sizing.estimate (`lmzoo hardware`).

Settings: inference at a 4,096-token context, training at 2,048 with activation checkpointing,
batch 1, one GPU's runtime overhead (0.5 GiB) included; "80GB GPUs" splits the total evenly.
"""

from __future__ import annotations

import re

from lmzoo.catalog import count_params, get_entry
from lmzoo.catalog.seeds import CLAIMS_001, CLAIMS_002, HARDWARE_000
from lmzoo.sizing.estimate import GiB, estimate_memory, gpus_needed

INFER_CONTEXT = 4096
TRAIN_CONTEXT = 2048


def _range(text: str) -> tuple[float, float]:
    nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text.split("(")[0])]
    return (nums[0], nums[-1]) if nums else (float("nan"), float("nan"))


def _gb(b: float) -> float:
    return b / GiB


def hardware_rows() -> list[dict]:
    rows = []
    for size, model, seed_train, seed_infer, seed_cpu, seed_gpus in HARDWARE_000:
        e = get_entry(model)
        ctx_i, ctx_t = min(INFER_CONTEXT, e.context), min(TRAIN_CONTEXT, e.context)
        inf = {dt: estimate_memory(model, task="infer", dtype=dt, context=ctx_i) for dt in ("bf16", "int8", "int4")}
        trn = {t: estimate_memory(model, task=t, dtype="bf16", context=ctx_t, activation_checkpointing=True)
               for t in ("train", "lora", "qlora")}
        n = count_params(model).total
        r = {"size": size, "model": model, "params": n, "seed_train": seed_train, "seed_infer": seed_infer,
             "seed_cpu": seed_cpu, "seed_gpus": seed_gpus,
             "train": _gb(trn["train"].total), "lora": _gb(trn["lora"].total), "qlora": _gb(trn["qlora"].total),
             "infer_bf16": _gb(inf["bf16"].total), "infer_int8": _gb(inf["int8"].total),
             "infer_int4": _gb(inf["int4"].total), "weights_fp16": n * 2 / GiB,
             "gpus80_infer": gpus_needed(inf["bf16"].total, 80 * GiB),
             "gpus80_train": gpus_needed(trn["train"].total, 80 * GiB)}
        r["note"] = _note(r)
        rows.append(r)
    return rows


def _note(r: dict) -> str:
    lo_t, hi_t = _range(r["seed_train"])
    lo_i, hi_i = _range(r["seed_infer"])
    ours = {"QLoRA": r["qlora"], "LoRA": r["lora"], "full fine-tuning": r["train"]}
    nearest = min(ours, key=lambda k: abs(ours[k] - hi_t))
    parts = [f"training: the seed's {r['seed_train']} GB is closest to {nearest} ({ours[nearest]:.0f} GiB); full "
             f"fine-tuning with AdamW in mixed precision needs 16 bytes per parameter "
             f"({r['params'] * 16 / GiB:.0f} GiB) before activations, {r['train']:.0f} GiB in all"]
    w = r["weights_fp16"]
    if lo_i < w * 0.95:
        parts.append(f"inference: the seed's {lo_i:g} GB lower bound is below the fp16 weights alone ({w:.1f} GiB); "
                     f"8-bit ({r['infer_int8']:.0f} GiB) or 4-bit ({r['infer_int4']:.0f} GiB) weights get there")
    else:
        parts.append(f"inference: the seed's {r['seed_infer'].split(' (')[0]} GB ~ fp16 weights {w:.0f} GiB + KV "
                     f"cache + activations = {r['infer_bf16']:.0f} GiB")
    if r["size"] == "304B":
        parts.append("no 304B model is open; Grok-1 (314B MoE) stands in")
    return "; ".join(parts) + "."


def other_claims() -> list[dict]:
    out = []
    e = get_entry("ChatGLM-6B")
    for dt, inf_gb, peft_gb in CLAIMS_001:
        m = estimate_memory(e.name, task="infer", dtype=dt if dt != "fp16" else "fp16", context=2048)
        q = estimate_memory(e.name, task="lora" if dt == "fp16" else "qlora", dtype="fp16", context=512,
                            activation_checkpointing=True)
        out.append({"model": f"ChatGLM-6B {dt}", "seed": f"{inf_gb} GB inference / {peft_gb} GB PEFT",
                    "ours": f"{_gb(m.total):.1f} GiB inference (2K context) / "
                            f"{_gb(q.total):.1f} GiB {'LoRA' if dt == 'fp16' else 'QLoRA (4-bit)'} (512 context)"})
    for model, claim in CLAIMS_002:
        m = estimate_memory(model, task="infer", dtype="bf16", context=min(2048, get_entry(model).context))
        n80 = gpus_needed(m.total, 80 * GiB)
        n24 = gpus_needed(m.total, 24 * GiB)
        out.append({"model": model, "seed": claim,
                    "ours": f"{_gb(m.total):.1f} GiB bf16 at 2K context: {n24} x 24GB or {n80} x 80GB"})
    return out
