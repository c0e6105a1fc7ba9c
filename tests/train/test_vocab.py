"""Vocabulary extension (Chinese-LLaMA) on a real LLaMA-style SentencePiece model (Mistral v1's, from
PyPI mistral-common: 32k BPE pieces with byte fallback) and a real Chinese corpus (Debian's
fortunes-zh: classical poems and sayings). The grown checkpoint loads in transformers with the same
logits as lmzoo; old ids, English tokenisation and English logits are unchanged; Chinese text takes
fewer tokens on held-out documents; new rows are the mean of their old parts; continued pretraining
lowers the loss on Chinese text."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

import lmzoo
from lmzoo.tokenizer import load_tokenizer
from lmzoo.train.vocab import ANSI, CJK, tokens_per_char

FORTUNES = Path("/usr/share/games/fortunes")
ENGLISH = ["Hello world, how are you today?", "def f(x):\n    return x + 1", "naïve café — 3.14 ✓"]


def fortunes() -> list[str]:
    docs = [ANSI.sub("", d).strip() for f in ("chinese", "tang300", "song100")
            for d in (FORTUNES / f).read_text(encoding="utf-8").split("\n%\n")]
    return [d for d in docs if d]


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    import transformers as tf

    root = tmp_path_factory.mktemp("vocab")
    base = root / "base"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=False)).save_pretrained(base)
    src = next(f for f in importlib.metadata.files("mistral-common") if f.name == "tokenizer.model.v1").locate()
    shutil.copy(src, base / "tokenizer.model")
    (base / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                            "add_bos_token": True, "tokenizer_class": "LlamaTokenizer"}))
    docs = fortunes()
    corpus = root / "zh.txt"
    corpus.write_text("\n\n".join(d.replace("\n\n", "\n") for d in docs), encoding="utf-8")
    out = root / "zh"
    r = subprocess.run([sys.executable, "-m", "lmzoo", "vocab", "extend", "--model", str(base), "--corpus", str(corpus),
                        "--add", "4000", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return base, out, corpus, r.stderr, docs


def test_vocabulary_grows_and_old_ids_keep_their_pieces(extended):
    base, out, _, log, _ = extended
    old = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    new = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert new.get_piece_size() == 36000 and "32000 -> 36000" in log
    assert all(old.id_to_piece(i) == new.id_to_piece(i) for i in range(32000))
    added = [new.id_to_piece(i) for i in range(32000, 36000)]
    assert all(CJK.search(p) and all(CJK.match(c) for c in p.removeprefix("\u2581")) for p in added)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 36000


def test_fewer_tokens_for_chinese_same_for_english(extended):
    base, out, _, log, docs = extended
    old, new = load_tokenizer(base), load_tokenizer(out)
    held = docs[-int(len(docs) * 0.05):]  # what the CLI held out (the last 5% of the documents)
    before, after = tokens_per_char(old, held), tokens_per_char(new, held)
    assert after < 0.8 * before, (before, after)
    import re

    reported = re.search(r"held-out Chinese text: ([\d.]+) -> ([\d.]+) tokens per character", log)
    assert reported and abs(float(reported[1]) - before) < 0.02 and abs(float(reported[2]) - after) < 0.02
    for text in ENGLISH:
        assert new.encode(text) == old.encode(text)
    import transformers as tf

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))  # the reference encoder
    hf = tf.AutoTokenizer.from_pretrained(out)  # transformers converts the extended tokenizer.model
    for text in ENGLISH + held[:20]:
        assert new.encode(text, add_special_tokens=False) == sp.encode(text)
        if "  " not in text:  # (HF's fast conversion of SentencePiece differs on runs of spaces, extended or not)
            assert hf.encode(text) == new.encode(text)


def test_transformers_loads_it_with_lmzoos_logits_and_english_logits_unchanged(extended):
    import transformers as tf

    base, out, _, _, docs = extended
    ours = lmzoo.from_pretrained(out)
    theirs = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = load_tokenizer(out)
    ids = torch.tensor([tok.encode(docs[0][:40] + " and English")])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4
        en = torch.tensor([tok.encode(ENGLISH[0])])
        before = lmzoo.from_pretrained(base)(en)
        after = ours(en)
    assert torch.equal(after[..., :32000], before)  # the old rows are untouched


def test_new_rows_are_the_mean_of_their_old_parts(extended):
    base, out, _, _, _ = extended
    old_model, new_model = lmzoo.from_pretrained(base), lmzoo.from_pretrained(out)
    old = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    new = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    anchor = old.encode("。")
    for i in (32000, 32001, 33500, 35999):
        parts = old.encode("。" + new.id_to_piece(i).replace("\u2581", " "))[len(anchor):]
        for a, b in ((new_model.embed.weight, old_model.embed.weight), (new_model.lm_head.weight, old_model.lm_head.weight)):
            torch.testing.assert_close(a[i], b[parts].mean(0))


def test_continued_pretraining_lowers_the_chinese_loss(extended, tmp_path):
    _, out, corpus, _, _ = extended
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--from", str(out), "--data", str(corpus),
                        "--out", str(tmp_path / "run"), "--max-steps", "30", "--seq-len", "64", "--batch-size", "8",
                        "--lr", "3e-3", "--warmup-steps", "3"], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in rows if "loss" in x]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0, losses  # nats, in 30 steps from ln(36000) ~ 10.5


def test_bad_input():
    r = subprocess.run([sys.executable, "-m", "lmzoo", "vocab", "extend", "--model", "/nonexistent", "--corpus", "x",
                        "--out", "/tmp/never"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
