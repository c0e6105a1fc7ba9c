"""`lmzoo pretrain`: the token file and its windows (documents never seen across), a tiny LLaMA
trained from scratch whose HF checkpoint transformers loads with the same logits, continued
pretraining, and one-line errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmzoo.train.corpus import TokenWindows, tokenize_corpus
from lmzoo.train.data import IGNORE

TINY = ["--config", "Llama-2-7B", "--set", "n_layer=2", "--set", "n_embd=64", "--set", "n_head=4",
        "--set", "n_kv_head=2", "--set", "intermediate_size=128", "--set", "max_seq_len=128"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the big red ball while a bird sang in the old tree".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30))) + "." for _ in range(240)]
    (d / "a.txt").write_text("\n\n".join(docs[:200]) + "\n")
    (d / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs[200:]))
    return d, docs


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tok(smollm2_path):
    from lmzoo.tokenizer import load_tokenizer

    return load_tokenizer(smollm2_path)


def test_token_file_holds_every_document_and_is_reused(corpus, smollm2_path):
    d, docs = corpus
    tok = _tok(smollm2_path)
    tokens, starts, path = tokenize_corpus([d], tok, "smollm2")
    want = [t for doc in docs for t in tok.encode(doc, add_special_tokens=False) + [tok.eos_token_ids[0]]]
    assert np.array_equal(np.asarray(tokens), np.asarray(want, dtype=np.uint32))
    assert len(starts) == len(docs)
    mtime = path.stat().st_mtime_ns
    again, _, path2 = tokenize_corpus([d], tok, "smollm2")
    assert path2 == path and path.stat().st_mtime_ns == mtime


def test_windows_never_cross_documents(corpus, smollm2_path):
    d, _ = corpus
    tokens, starts, _ = tokenize_corpus([d], _tok(smollm2_path), "smollm2")
    w = TokenWindows(tokens, starts, 32)
    starts_set = set(starts.tolist())
    for i in range(len(w)):
        ids, targets, seg = w.window(i)
        base = i * 32
        for t in range(32):
            nxt = base + t + 1
            if nxt in starts_set or nxt >= len(tokens):
                assert targets[t] == IGNORE
            else:
                assert targets[t] == int(tokens[nxt])
                assert t == 31 or seg[t + 1] == seg[t]  # inside one document: one segment
        assert seg[0] == 0 and bool((seg.diff() >= 0).all())
    b = next(w.batches(4, seed=0, epoch=0))
    assert b.ids.shape == (4, 32)
    # rank r of 2 reads rows [2r, 2r + 2) of every batch of 4: together, the batches of one process
    shards = [[x.ids.tolist() for x in TokenWindows(tokens, starts, 32, rank=r, world=2).batches(4, 0, 0)]
              for r in (0, 1)]
    alone = [x.ids.tolist() for x in w.batches(4, 0, 0)]
    assert [a + b for a, b in zip(*shards)] == alone and all(len(a) == 2 for a in shards[0])


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--quiet", *args], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())


def test_pretrain_from_scratch_then_continue(corpus, tmp_path):
    transformers = pytest.importorskip("transformers")
    import lmzoo

    d, _ = corpus
    r = _run(*TINY, "--data", str(d), "--out", str(tmp_path / "run"), "--max-steps", "30", "--seq-len", "64",
             "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "3")
    assert r.returncode == 0, r.stderr
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["loss"] > 9 and m[-1]["loss"] < 0.5 * m[0]["loss"], (m[0]["loss"], m[-1]["loss"])
    out = tmp_path / "run" / "model"
    ref, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = lmzoo.from_pretrained(out, dtype=torch.float32)
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ref.eval()(ids).logits - ours(ids)).abs().max() <= 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    from lmzoo.tokenizer import load_tokenizer

    assert hf_tok("the cat sat")["input_ids"] == load_tokenizer(out).encode("the cat sat")
    again = _run("--from", str(out), "--data", str(d), "--out", str(tmp_path / "more"), "--max-steps", "2",
                 "--seq-len", "64", "--batch-size", "4", "--bf16")  # continued, under bf16 autocast on the CPU
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "more" / "model" / "model.safetensors").exists()
    m = [json.loads(x) for x in (tmp_path / "more" / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "more" / "run.json").read_text())["config"]["autocast_bf16"] is True
    assert len(m) == 2 and all(x["loss"] < 0.7 * 9 for x in m)  # continues from the trained weights


@pytest.mark.parametrize("args,message", [
    (["--set", "n_layers=2"], "not ModelConfig fields"),
    (["--set", "n_layer=-1"], "n_layer must be a positive integer"),
    (["--set", "n_layer"], "expected FIELD=VALUE"),
    (["--from", "/nonexistent"], "exactly one of --config"),
])
def test_bad_settings_are_one_line(corpus, tmp_path, args, message):
    d, _ = corpus
    r = _run(*TINY, *args, "--data", str(d), "--out", str(tmp_path / "x"), "--max-steps", "1")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_corpus_is_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    for path, message in ((tmp_path / "empty.txt", "holds no text"), (tmp_path / "nope", "does not exist")):
        r = _run(*TINY, "--data", str(path), "--out", str(tmp_path / "x"), "--max-steps", "1", "--seq-len", "64")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# --- --objective glm: GLM's blank infilling on a ChatGLM-6B-shaped model (lmzoo.train.glm) ------------

V_SMOL = 49152  # the default tokenizer's; GLM's five tokens sit after it
GLM_TINY = ["--config", "ChatGLM-6B", "--set", "n_layer=2", "--set", "n_embd=64", "--set", "n_head=4",
            "--set", "n_kv_head=4", "--set", "intermediate_size=128", "--set", "max_seq_len=128",
            "--set", f"vocab_size={V_SMOL + 8}", "--set", f"mask_token_ids=[{V_SMOL + 1},{V_SMOL},{V_SMOL + 2}]",
            "--set", f"bos_token_id={V_SMOL + 3}", "--set", f"eos_token_id=[{V_SMOL + 4}]",
            "--set", f"pad_token_id={V_SMOL + 4}"]


def test_pretrain_glm_objective_from_scratch(corpus, tmp_path):
    import lmzoo

    d, _ = corpus
    r = _run(*GLM_TINY, "--objective", "glm", "--glm-mix", "0.4,0.3,0.3", "--init-std", "0.1", "--data", str(d), "--out",
             str(tmp_path / "run"), "--max-steps", "25", "--seq-len", "64", "--batch-size", "8", "--lr", "3e-3",
             "--warmup-steps", "3")
    assert r.returncode == 0, r.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["objective"] == "glm" and run["glm_mix"] == {"mask": 0.4, "smask": 0.3, "gmask": 0.3}
    m = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert m[-1]["loss"] < 0.6 * m[0]["loss"], (m[0]["loss"], m[-1]["loss"])
    model = lmzoo.from_pretrained(tmp_path / "run" / "model", dtype=torch.float32)  # THUDM's ChatGLM-6B layout
    c = model.config
    assert (c.position, c.prefix_lm, c.n_layer, c.mask_token_ids, c.bos_token_id) == \
        ("rope_2d", True, 2, (V_SMOL + 1, V_SMOL), V_SMOL + 3)
    assert c.deepnorm_alpha == pytest.approx(2.0)  # sqrt(2 n_layer), re-derived for the 2 layers
    again = _run("--from", str(tmp_path / "run" / "model"), "--objective", "glm", "--data", str(d), "--out",
                 str(tmp_path / "more"), "--max-steps", "2", "--seq-len", "64", "--batch-size", "4")
    assert again.returncode == 0, again.stderr  # continued: the tokens come from the saved config


@pytest.mark.parametrize("args,message", [
    ([*TINY, "--objective", "glm"], "needs a GLM model with 2-D positions"),
    (["--config", "ChatGLM-6B", "--set", "n_layer=1", "--objective", "glm"], "is outside the vocabulary"),
    ([*GLM_TINY, "--objective", "glm", "--glm-mix", "0.5,0.5"], "expected three fractions"),
    ([*GLM_TINY, "--objective", "glm", "--glm-mix", "0.5,0.2,0.2"], "summing to 1"),
    ([*GLM_TINY, "--objective", "bert"], "expected one of causal, glm"),
    ([*GLM_TINY, "--init-std", "0"], "--init-std must be > 0, got 0.0"),
])
def test_glm_objective_errors_are_one_line(corpus, tmp_path, args, message):
    d, _ = corpus
    r = _run(*args, "--data", str(d), "--out", str(tmp_path / "x"), "--max-steps", "1", "--seq-len", "64")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
