"""`lmzoo convert` (lmzoo/cli/convert.py over lmzoo/checkpoints/convert.py): HF -> GGUF streamed
from the checkpoint's files, GGUF -> HF, and the bad inputs — each one line on stderr, exit 2, and
no file left under the destination's name."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.cli import main
from tests.helpers import perturb_
from tests.refs import gguf_ref

gguf = pytest.importorskip("gguf")
V = 300


def byte_level_tokenizer(d, n_tokens: int) -> None:
    """A small byte-level BPE tokenizer.json (GPT-2's byte alphabet plus a few merges) in `d`."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from lmzoo.tokenizer import _gpt2_byte_alphabet

    alphabet = _gpt2_byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for i in range(len(vocab), n_tokens - 1):
        vocab[f"tok{i}"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))


def hf_dir(tmp_path, *, hidden=64, vocab=V, tokens=V):
    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=min(tokens, vocab) - 1, eos_token_id=min(tokens, vocab) - 1, pad_token_id=None)
    torch.manual_seed(0)
    ref = perturb_(tf.LlamaForCausalLM(cfg), scale=0.05).eval()
    d = tmp_path / "hf"
    ref.save_pretrained(d)
    byte_level_tokenizer(d, tokens)
    return ref, d


def run(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # what came before (transformers' save progress)
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_hf_to_gguf_streams_and_loads_back(tmp_path, capsys):
    ref, d = hf_dir(tmp_path)
    out = tmp_path / "m.gguf"
    code, stdout, err = run(capsys, "convert", str(d), "--to", "gguf", "--type", "f32", "--out", str(out), "-q")
    assert code == 0, err
    assert stdout.startswith(f"wrote {out}: GGUF llama, F32, 21 tensors") and "MiB" in stdout
    back = lmzoo.from_pretrained(out)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (back(ids) - ref(ids).logits).abs().max() <= 1e-4
    tok, src_tok = lmzoo.tokenizer.load_tokenizer(out), lmzoo.tokenizer.load_tokenizer(d)
    for s in ["the cat in the hat", "  spaces\n\nand tabs\t", "ünïcödé 你好 😀", "x<|endoftext|>y"]:
        assert tok.encode(s) == src_tok.encode(s), s
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_gguf_to_hf_subprocess(tmp_path):
    """As a user runs it: GGUF in, an HF directory transformers loads with the same logits."""
    ref, d = hf_dir(tmp_path)
    g = tmp_path / "m.gguf"
    lmzoo.save_gguf(lmzoo.from_pretrained(d), None, g, "f32")
    r = subprocess.run([sys.executable, "-m", "lmzoo", "convert", str(g), "--to", "hf", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"wrote {tmp_path / 'o'}: HF llama")
    back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "o").eval()
    ids = torch.randint(0, V, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (back(ids).logits - ref(ids).logits).abs().max() <= 1e-4


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmzoo: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unsupported_architecture(tmp_path, capsys):
    p = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, _, err = run(capsys, "convert", str(p), "--to", "gguf", "--out", str(tmp_path / "o.gguf"))
    one_line_error(code, err, "'mamba' is not supported", "supported:", "llama", "qwen2")
    assert not (tmp_path / "o.gguf").exists()


def test_unsupported_block_type(tmp_path, capsys):
    ref, d = hf_dir(tmp_path)
    arch, meta, tensors = gguf_ref.hf_to_gguf(ref)
    p = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(p), arch)
    for k, v in meta.items():
        (w.add_uint32 if isinstance(v, int) else w.add_float32)(f"{arch}.{k}", v)
    T = gguf.GGMLQuantizationType
    for name, a in tensors.items():
        if name == "blk.0.ffn_up.weight":  # one tensor in a block type lmzoo does not decode
            qk, size = gguf.GGML_QUANT_SIZES[T.IQ4_NL]
            w.add_tensor(name, np.zeros((a.shape[0], a.shape[1] // qk * size), np.uint8), raw_dtype=T.IQ4_NL)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, _, err = run(capsys, "convert", str(p), "--to", "gguf", "--out", str(tmp_path / "o.gguf"))
    one_line_error(code, err, "IQ4_NL", "supported:", "Q8_0")
    assert not (tmp_path / "o.gguf").exists()


def test_export_type_the_architecture_cannot_hold(tmp_path, capsys):
    _, d = hf_dir(tmp_path, hidden=48)  # rows of 48: no 32-wide blocks
    out = tmp_path / "o.gguf"
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--type", "q8_0", "--out", str(out))
    one_line_error(code, err, "q8_0 blocks span 32 columns", "rows of 48", "can be written as: f32, f16, bf16")
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--type", "q4_k", "--out", str(out))
    one_line_error(code, err, "'q4_k' is not supported", "supported: f32, f16, bf16, q8_0")
    assert not out.exists()


def test_family_without_a_gguf_architecture(tmp_path, capsys):
    torch.manual_seed(0)
    m = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, ffn_dim=64,
                                       num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=32))
    m.save_pretrained(tmp_path / "opt")
    code, _, err = run(capsys, "convert", str(tmp_path / "opt"), "--to", "gguf", "--out", str(tmp_path / "o.gguf"))
    one_line_error(code, err, "model_type 'opt'", "supported:", "llama", "gpt2")


def test_a_model_the_architecture_cannot_hold(tmp_path):
    """A LayerNorm / GELU network written as `llama` would load as another network: refused, naming the fields."""
    from lmzoo.errors import UnsupportedModelError

    _, d = hf_dir(tmp_path)
    m = lmzoo.from_pretrained(d)
    m.config = m.config.replace(norm="layernorm")
    with pytest.raises(UnsupportedModelError, match="'llama' cannot hold this model: norm='layernorm'"):
        lmzoo.save_gguf(m, None, tmp_path / "o.gguf", "f32")
    assert not (tmp_path / "o.gguf").exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    _, d = hf_dir(tmp_path)
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--out", str(out))
    one_line_error(code, err, f"{out} exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--out", str(out), "--overwrite", "-q")
    assert code == 0, err
    assert out.read_bytes()[:4] == b"GGUF"


def test_vocabulary_not_matching_the_checkpoint(tmp_path, capsys):
    _, d = hf_dir(tmp_path, vocab=V, tokens=V + 40)  # the tokenizer has 40 ids the model cannot produce
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--out", str(tmp_path / "o.gguf"))
    one_line_error(code, err, f"{V + 40} tokens but the model's vocabulary is {V}")
    assert not (tmp_path / "o.gguf").exists()
    # lmzoo export (through the model) refuses the same checkpoint, writing nothing
    code, _, err = run(capsys, "export", "--model", str(d), "--out", str(tmp_path / "hf-out"))
    one_line_error(code, err, f"{V + 40} tokens but the model has a vocabulary of {V}")
    assert not (tmp_path / "hf-out").exists()


def convert_fails_on_a_full_disk(capsys, src, to: str, out, existing: bool) -> None:
    """`lmzoo convert SRC --to TO --out OUT` (--overwrite when OUT exists) under an ENOSPC: one line, and
    beside OUT only OUT's old self, if any (no temporary left)."""
    args = ["convert", str(src), "--to", to, "--out", str(out), "-q"] + (["--overwrite"] if existing else [])
    code, _, err = run(capsys, *args)
    one_line_error(code, err, "No space left on device", f"nothing was written to {out}")
    assert [p.name for p in out.parent.iterdir()] == ([out.name] if existing else [])


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_mid_write_leaves_nothing(tmp_path, capsys, monkeypatch, existing):
    """The write fails after a few tensors (ENOSPC): no file under the final name (or the old one
    untouched with --overwrite), no temporary file left beside it."""
    _, d = hf_dir(tmp_path)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    if existing:
        out.write_bytes(b"old")
    real = gguf.GGUFWriter.write_tensor_data
    calls = {"n": 0}

    def failing(self, tensor, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    convert_fails_on_a_full_disk(capsys, d, "gguf", out, existing)
    assert calls["n"] == 4
    if existing:
        assert out.read_bytes() == b"old"


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_mid_write_to_hf_leaves_nothing(tmp_path, capsys, monkeypatch, existing):
    """GGUF -> HF failing in the middle of a shard (ENOSPC from the file write): one line, no directory
    under the final name (or the old one untouched with --overwrite), nothing temporary left beside it."""
    import lmzoo.checkpoints.save as save

    _, d = hf_dir(tmp_path)
    g = tmp_path / "m.gguf"
    lmzoo.save_gguf(lmzoo.from_pretrained(d), None, g, "f32")
    out = tmp_path / "out" / "hf"
    out.parent.mkdir()
    if existing:
        out.mkdir()
        (out / "config.json").write_text("{}")
    real, written = save.write_safetensors, {"n": 0}

    def failing(path, entries, tensors, done=None):
        def counted():
            for item in tensors:
                written["n"] += 1
                if written["n"] == 4:
                    raise OSError(errno.ENOSPC, "No space left on device")
                yield item
        return real(path, entries, counted(), done)

    monkeypatch.setattr(save, "write_safetensors", failing)
    convert_fails_on_a_full_disk(capsys, g, "hf", out, existing)
    assert written["n"] == 4
    if existing:
        assert [p.name for p in out.iterdir()] == ["config.json"]


def test_export_to_gguf(tmp_path, capsys):
    """`lmzoo export --to gguf` (the model loaded, then lmzoo.save_gguf) writes what convert streams."""
    _, d = hf_dir(tmp_path)
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    code, stdout, err = run(capsys, "export", "--model", str(d), "--to", "gguf", "--type", "q8_0", "--out", str(a))
    assert code == 0, err
    assert stdout.startswith(f"wrote {a}: GGUF llama, Q8_0")
    code, _, err = run(capsys, "convert", str(d), "--to", "gguf", "--type", "q8_0", "--out", str(b), "-q")
    assert code == 0, err
    assert a.read_bytes() == b.read_bytes()
