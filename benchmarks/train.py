"""Training throughput and peak memory: lmzoo vs transformers + peft, same weights, data and batch.

    python benchmarks/train.py [--rows 4] [--seq 256] [--steps 6] [--rounds 2] [--prompt-fraction 0,0.5]
                               [--precision fp32,bf16] [--methods lora,full,qlora-gguf,dpo]
    LITGPT_PYTHON=.venv-litgpt/bin/python python benchmarks/train.py ...   # + litgpt (setup_litgpt.sh)
    python benchmarks/train.py --data chitchat --rows 8 --seq 512 ...      # real chat examples

The default model (SmolLM2-135M-Instruct) is exported once as a float32 HF checkpoint (lmzoo export),
and both sides load that directory. Each (backend, method) runs in a fresh process, alternating
backends, `--rounds` times: 2 warm-up steps, then `--steps` timed optimizer steps on a fixed batch of
random ids (every token a target, or with --prompt-fraction F the first F of each row a prompt without
targets, as SFT on instruction or chat data masks the prompt: the same ids and labels for both sides),
AdamW lr 1e-4. Methods: LoRA r=8 alpha=16 on every linear layer of
the blocks, and full fine-tuning; plus lmzoo's LoRA over the GGUF's own 4-bit blocks (QLoRA-style,
a row transformers + peft have no counterpart for on CPU); and DPO with LoRA against trl's DPOTrainer
(`dpo_setup`: `rows` pairs of two `seq`-token sequences); with LITGPT_PYTHON, litgpt's LoRA and full
steps too (`litgpt_setup`). tokens/s = sequences x seq x steps / time;
peak = the process's max RSS (ru_maxrss), which includes the Python/torch baseline of each side.

With --data chitchat the rows are real SFT examples of varied length instead (`chitchat_groups`), a new
group of --rows examples each step, the same groups for both sides: lmzoo packs a group into rows of
--seq tokens with no attention across examples (`lmzoo finetune`'s default), transformers pads it to
its longest example (`padded`, as its collators do); tokens/s counts the examples' own tokens.
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


def worker(backend: str, method: str, path: str, rows: int, seq: int, steps: int, prompt: float = 0.0,
           precision: str = "fp32", data: str | None = None) -> dict:
    import resource
    import time

    import torch

    torch.manual_seed(0)
    V = 49152
    ids = torch.randint(0, V, (rows, seq), generator=torch.Generator().manual_seed(1))
    P = int(prompt * seq)  # tokens 0..P-1 of a row are its prompt: no loss on predicting them
    # --data: step i trains on group i of `rows` real examples ([ids, shifted targets] each)
    groups = json.loads(Path(data).read_text())[: steps + 2] if data else None
    batches = [None]  # what loss_fn takes at step i: batches[i % len(batches)]
    if method == "dpo":
        loss_fn, model = dpo_setup(backend, path, ids, V)
    elif backend == "litgpt":
        loss_fn, model = litgpt_setup(method, path, ids, P)
    elif backend.startswith("transformers"):
        import peft
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if method == "lora":
            model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))

        labels = ids.clone()
        labels[:, :P] = -100  # transformers shifts: labels[t] is the target of position t - 1
        batches = [padded(g) for g in groups] if groups else [(ids, None, labels)]

        def loss_fn(b):
            return model(input_ids=b[0], attention_mask=b[1], labels=b[2]).loss
    else:
        import lmzoo
        from lmzoo.checkpoints.peft import add_lora
        from lmzoo.train.data import IGNORE, Batch, Example, collate, pack
        from lmzoo.train.loop import SFTObjective

        if method == "qlora-gguf":
            from lmzoo.checkpoints.assets import default_model_path

            model = lmzoo.from_pretrained(default_model_path(), cpu_kernels=False)  # int4/int8 blocks kept
        else:
            model = lmzoo.from_pretrained(path, dtype=torch.float32, cpu_kernels=False)
        if method in ("lora", "qlora-gguf"):
            add_lora(model, targets="all-linear", r=8, alpha=16)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        targets = torch.cat([ids[:, 1:], torch.full((rows, 1), IGNORE)], dim=1)
        targets[:, :max(P - 1, 0)] = IGNORE  # targets[t] = ids[t + 1]: none inside the prompt
        batches = [Batch(ids, targets, torch.zeros_like(ids))]
        if groups:  # packed into rows of `seq` tokens, no attention across examples (lmzoo finetune's default)
            examples = [[Example(i, t) for i, t in g] for g in groups]
            batches = [collate(e, pack(e, seq)) for e in examples]
        obj = SFTObjective()
        if precision == "bf16":
            from lmzoo.train.loop import hold_frozen_linears

            hold_frozen_linears(model, torch.bfloat16)

        def loss_fn(b):
            total, _ = obj.loss(model, b)
            return total / obj.units(b)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if method == "dpo":
        rows = 2 * rows  # a pair is two sequences
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)

    def step(i):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(batches[i % len(batches)])
        loss.backward()
        opt.step()
        return float(loss)

    first = step(0)
    step(1)
    t0 = time.perf_counter()
    for i in range(steps):
        last = step(2 + i)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    tokens = sum(len(x) for g in groups[2:] for x, _ in g) if groups else rows * seq * steps
    return {"tokens_per_s": tokens / dt, "peak_mib": peak, "first_loss": first, "last_loss": last,
            "trainable": sum(p.numel() for p in params)}


def padded(group):
    """Examples ([ids, shifted targets]) as transformers' collators batch them: right-padded to the
    longest, attention_mask 0 on the padding, labels -100 there and on prompt tokens (transformers shifts:
    labels[t] is the target of position t - 1). Packing with transformers on the CPU would let examples
    attend to each other (its packed-sequence attention needs flash-attention 2, a GPU kernel)."""
    import torch

    T = max(len(x) for x, _ in group)
    ids = torch.zeros(len(group), T, dtype=torch.long)
    mask = torch.zeros(len(group), T, dtype=torch.long)
    labels = torch.full((len(group), T), -100, dtype=torch.long)
    for b, (x, t) in enumerate(group):
        ids[b, : len(x)], mask[b, : len(x)] = torch.tensor(x), 1
        labels[b, 1 : len(x)] = torch.tensor(t[:-1])  # lmzoo's IGNORE is -100 too
    return ids, mask, labels


def chitchat_groups(tok, n_groups: int, rows: int, seq: int) -> list:
    """Groups of `rows` SFT examples from PyPI chitchat-dataset (MIT; 7k English conversations): each
    conversation cut into pieces of 2, 4, ..., 12 turns in turn (the first speaker the user), rendered
    with the model's chat template, loss on the assistant's turns (the first 450 pieces: 47-649 tokens,
    median 136, a third of the tokens targets, as instruction and chat data spread). Longer pieces are cut to `seq`."""
    import random

    from lmzoo.train.data import IGNORE, encode_sft

    try:
        from chitchat_dataset import Dataset
    except ImportError:
        raise SystemExit("--data chitchat needs PyPI chitchat-dataset: pip install chitchat-dataset") from None
    examples = []
    for conv in Dataset().values():
        turns = [" ".join(u["text"] for u in m) for m in conv["messages"]]
        start, width = 0, 2
        while start + 1 < len(turns):
            piece = turns[start:start + width]
            msgs = [{"role": ("user", "assistant")[k % 2], "content": t} for k, t in enumerate(piece[: len(piece) // 2 * 2])]
            ex = encode_sft(tok, msgs)
            ids, targets = ex.ids[:seq], ex.targets[:seq]
            targets[-1] = IGNORE  # a cut piece: its last token's target is beyond the cut
            if any(t != IGNORE for t in targets):
                examples.append([ids, targets])
            start, width = start + width, 2 + width % 12
        if len(examples) >= 4 * n_groups * rows:
            break
    random.Random(0).shuffle(examples)
    return [examples[i * rows:(i + 1) * rows] for i in range(n_groups)]


def litgpt_setup(method: str, path: str, ids, P: int):
    """litgpt's fine-tuning step (litgpt/finetune/lora.py and full.py: the head in chunks of 128 rows,
    chunked_cross_entropy) on the same weights (the HF export converted by litgpt's own
    convert_hf_checkpoint), ids and targets; LoRA r=8 alpha=16 on q, k, v, projection and MLP, as peft's
    all-linear. Runs in litgpt's own virtualenv (LITGPT_PYTHON): no lmzoo import."""
    import shutil
    import tempfile

    import torch
    from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint
    from litgpt.utils import chunked_cross_entropy

    d = Path(tempfile.mkdtemp()) / "ckpt"
    shutil.copytree(path, d)
    convert_hf_checkpoint(checkpoint_dir=d, model_name="SmolLM2-135M-Instruct")
    state = torch.load(d / "lit_model.pth")
    if method == "lora":
        from litgpt.lora import GPT, Config, mark_only_lora_as_trainable

        model = GPT(Config.from_name("SmolLM2-135M-Instruct", lora_r=8, lora_alpha=16, lora_dropout=0.0,
                                     lora_query=True, lora_key=True, lora_value=True, lora_projection=True,
                                     lora_mlp=True, lora_head=False))
        model.load_state_dict(state, strict=False)
        mark_only_lora_as_trainable(model)
    else:
        from litgpt.config import Config
        from litgpt.model import GPT

        model = GPT(Config.from_name("SmolLM2-135M-Instruct"))
        model.load_state_dict(state)
    labels = ids.clone()
    labels[:, :P] = -100

    def loss_fn(_):
        logits = model(ids, lm_head_chunk_size=128)
        logits[-1] = logits[-1][..., :-1, :]
        return chunked_cross_entropy(logits, labels[..., 1:])
    return loss_fn, model


def dpo_setup(backend: str, path: str, ids, V: int):
    """DPO with LoRA (r=8, all linear layers), beta 0.1, on `rows` pairs: the first half of each row the
    prompt, its second half the chosen reply and the next row's second half the rejected one, each reply
    ending in EOS (id 2), as trl appends it. The reference log-probs are computed once before the timed
    steps on both sides (lmzoo's way; trl's `precompute_ref_log_probs=True`, which trl computes with
    the adapters disabled). Returns (loss_fn, the trained module)."""
    import torch

    half = ids.shape[1] // 2
    prompts = ids[:, :half].tolist()
    replies = ids[:, half:-1].tolist()  # + EOS: the same sequence length as the other methods
    pairs = [(prompts[i], replies[i] + [2], replies[(i + 1) % len(replies)] + [2]) for i in range(len(prompts))]
    if backend == "transformers":
        import peft
        import transformers
        from datasets import Dataset
        from tokenizers import Tokenizer, models, pre_tokenizers
        from trl import DPOConfig, DPOTrainer

        # a word per id (the specials' names cannot occur inside another word: special tokens are
        # matched anywhere in the text)
        names = ["<pad>", "<unk>", "<eos>"] + [f"w{i}" for i in range(3, V)]
        words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="<unk>"))
        words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>",
                                                   eos_token="<eos>")

        def text(xs):
            return "".join(" " + names[x] for x in xs)

        data = Dataset.from_list([{"prompt": text(p).strip(), "chosen": text(c[:-1]), "rejected": text(r[:-1])}
                                  for p, c, r in pairs])  # trl tokenizes these to the ids above, EOS appended
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        trainer = DPOTrainer(model=model, processing_class=tok, train_dataset=data, args=DPOConfig(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(pairs), beta=0.1, report_to="none",
            use_cpu=True, bf16=False, precompute_ref_log_probs=True, max_length=None))
        batch = next(iter(trainer.get_train_dataloader()))
        want = sorted([p + c for p, c, _ in pairs] + [p + r for p, _, r in pairs])
        assert sorted(batch["input_ids"].tolist()) == want, "trl's ids differ from lmzoo's"  # (it shuffles)

        def loss_fn(_):
            return trainer.compute_loss(trainer.model, batch)
        return loss_fn, trainer.model
    import lmzoo
    from lmzoo.checkpoints.peft import add_lora
    from lmzoo.train.data import IGNORE, Example
    from lmzoo.train.dpo import DPOObjective, Pair, _pair_batch, reference_logprobs

    def example(p, reply):
        x = p + reply
        return Example(x, [x[t + 1] if t + 1 >= len(p) else IGNORE for t in range(len(x) - 1)] + [IGNORE])

    model = lmzoo.from_pretrained(path, dtype=torch.float32, cpu_kernels=False)
    add_lora(model, targets="all-linear", r=8, alpha=16)
    ps = [Pair(example(p, c), example(p, r)) for p, c, r in pairs]
    reference_logprobs(model, ps)
    obj, pb = DPOObjective(beta=0.1), _pair_batch(ps)

    def loss_fn(_):
        total, _ = obj.loss(model, pb)
        return total / obj.units(pb)
    return loss_fn, model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-fraction", default="0,0.5", help="share of each row that is a prompt "
                    "without targets (SFT with the prompt masked; 0: every token a target), comma-separated")
    ap.add_argument("--precision", default="fp32,bf16", help="fp32 | bf16 (autocast), comma-separated")
    ap.add_argument("--methods", default="lora,full,qlora-gguf,dpo", help="lora | full | qlora-gguf (lmzoo "
                    "only) | dpo (LoRA DPO, against trl's DPOTrainer)")
    ap.add_argument("--data", help="chitchat: real SFT examples (chitchat_groups), a new group of --rows "
                    "examples each step, lmzoo packing them into --seq-token rows, transformers padding them; "
                    "tokens/s counts the examples' tokens; lora / full / qlora-gguf only")
    ap.add_argument("--worker", nargs=3, metavar=("BACKEND", "METHOD", "PATH"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a.rows, a.seq, a.steps, float(a.prompt_fraction), a.precision, a.data)))
        return
    tmp = Path(tempfile.mkdtemp()) / "smollm2-hf"
    subprocess.run([sys.executable, "-m", "lmzoo", "export", "--out", str(tmp)], check=True, capture_output=True)
    methods = a.methods.split(",")
    litgpt = os.environ.get("LITGPT_PYTHON")  # litgpt's own virtualenv (benchmarks/setup_litgpt.sh)
    peers = {"transformers": ("lora", "full", "dpo"), "litgpt": ("lora", "full") if litgpt else ()}
    data = {}  # backend (or "*") -> its --data file
    if a.data:
        from lmzoo.tokenizer import load_tokenizer

        if a.data != "chitchat":
            raise SystemExit(f"--data {a.data!r}: expected chitchat")
        if not set(methods) <= {"lora", "full", "qlora-gguf"}:
            raise SystemExit(f"--data takes --methods lora, full or qlora-gguf, got {a.methods}")
        groups = chitchat_groups(load_tokenizer(tmp), a.steps + 2, a.rows, a.seq)
        timed = sorted((x for g in groups[2:] for x in g), key=lambda x: len(x[0]))
        by_length = groups[:2] + [timed[i:i + a.rows] for i in range(0, len(timed), a.rows)]
        # transformers-by-length: the same timed examples regrouped by length (Trainer's group_by_length,
        # at its best: every group of similar length, the least padding)
        for name, gs in (("*", groups), ("transformers-by-length", by_length)):
            data[name] = tmp.parent / f"groups-{len(data)}.json"
            data[name].write_text(json.dumps(gs))
        a.prompt_fraction = "0"
        peers = {"transformers": ("lora", "full"), "transformers-by-length": ("lora", "full")}
        n = [len(x) for g in groups[2:] for x, _ in g]
        print(f"data: {len(n)} timed examples, {sum(n)} tokens, lengths {min(n)}-{max(n)}")
    runs = list(dict.fromkeys(  # DPO's prompt is always half of each row
        (backend, method, 0.5 if method == "dpo" else float(pf), prec)
        for pf in a.prompt_fraction.split(",") for prec in a.precision.split(",")
        for method in methods for backend in ("lmzoo", *peers) if backend == "lmzoo" or method in peers[backend]))
    results: dict[tuple, list] = {r: [] for r in runs}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    no_lmzoo = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for _ in range(a.rounds):
        for backend, method, pf, prec in runs:
            exe, e = (litgpt, no_lmzoo) if backend == "litgpt" else (sys.executable, env)
            d = ["--data", str(data.get(backend, data["*"]))] if data else []
            out = subprocess.run([exe, __file__, "--worker", backend, method, str(tmp), "--rows", str(a.rows),
                                  "--seq", str(a.seq), "--steps", str(a.steps), "--prompt-fraction", str(pf),
                                  "--precision", prec, *d], capture_output=True, text=True, env=e, check=True)
            results[(backend, method, pf, prec)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"rows={a.rows} seq={a.seq} steps={a.steps} rounds={a.rounds} (SmolLM2-135M, CPU, {torch_threads()} threads)")
    print(f"{'prompt':>6} {'prec':5} {'backend':22} {'method':11} {'tokens/s':>17} {'peak MiB':>15} {'trainable':>12} "
          f"{'loss first->last':>18}")
    for (backend, method, pf, prec), rs in results.items():
        tps = [r["tokens_per_s"] for r in rs]
        mem = [r["peak_mib"] for r in rs]
        r0 = rs[0]
        print(f"{pf:6.2f} {prec:5} {backend:22} {method:11} {min(tps):8.0f}-{max(tps):<8.0f} {min(mem):7.0f}-{max(mem):<7.0f} "
              f"{r0['trainable']:12,} {r0['first_loss']:8.3f}->{r0['last_loss']:.3f}")
    for (backend, method, pf, prec), ours in results.items():
        for peer in peers:
            theirs = results.get((peer, method, pf, prec))
            if backend != "lmzoo" or not theirs:
                continue
            ot, tt = [r["tokens_per_s"] for r in ours], [r["tokens_per_s"] for r in theirs]
            om, tm = [r["peak_mib"] for r in ours], [r["peak_mib"] for r in theirs]
            print(f"prompt {pf:.2f} {prec} {method}: lmzoo / {peer} tokens/s {min(ot) / max(tt):.2f}-"
                  f"{max(ot) / min(tt):.2f}x, peak memory {min(om) / max(tm):.2f}-{max(om) / min(tm):.2f}x")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()

if __name__ == "__main__":
    main()
