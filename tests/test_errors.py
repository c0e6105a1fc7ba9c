"""Bad input gets a specific exception with one line naming what was wrong and what was expected."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from safetensors.torch import load_file, save_file

import lmzoo
from lmzoo.errors import (
    CheckpointError,
    ContextLengthError,
    GenerationError,
    ModelNotFoundError,
    UnsupportedModelError,
)

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    tf.LlamaForCausalLM(tf.LlamaConfig(**CFG)).save_pretrained(tmp_path)
    return tmp_path


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        lmzoo.from_pretrained(tmp_path / "nope")
    assert "does not exist" in one_line(e)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        lmzoo.from_pretrained(tmp_path)
    assert "config.json" in one_line(e)


def test_directory_without_weights(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "no weights" in one_line(e)


def test_unsupported_model_type(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError) as e:
        lmzoo.from_pretrained(ckpt)
    msg = one_line(e)
    assert "'bert'" in msg and "llama" in msg and "qwen2" in msg  # lists what is supported


def test_malformed_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "not valid JSON" in one_line(e)


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "model.safetensors" in one_line(e)


def test_corrupt_safetensors_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"garbage!"
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "safetensors" in one_line(e)


def _rewrite(ckpt, fn):
    f = ckpt / "model.safetensors"
    state = load_file(f)
    fn(state)
    save_file(state, str(f))


def test_missing_tensor(ckpt):
    _rewrite(ckpt, lambda s: s.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "missing" in one_line(e) and "model.layers.1.mlp.up_proj.weight" in str(e.value)


def test_extra_tensor(ckpt):
    _rewrite(ckpt, lambda s: s.update({"model.layers.7.self_attn.q_proj.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "does not use" in one_line(e) and "layers.7" in str(e.value)


def test_shape_mismatch(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(ckpt)
    msg = one_line(e)
    assert "shape" in msg and "(48, 32)" in msg and "(80, 32)" in msg  # gate+up fused: 2 x 40


@pytest.fixture
def model():
    cfg = lmzoo.ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, intermediate_size=48, max_seq_len=16)
    return lmzoo.Transformer(cfg).eval()


def test_prompt_longer_than_context(model):
    with pytest.raises(ContextLengthError) as e:
        lmzoo.generate(model, torch.zeros((1, 17), dtype=torch.long), max_new_tokens=2)
    assert "17" in one_line(e) and "16" in str(e.value)


@pytest.mark.parametrize("kw,needle", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_invalid_sampling(model, kw, needle):
    with pytest.raises(GenerationError) as e:
        lmzoo.generate(model, torch.zeros((1, 3), dtype=torch.long), **{"max_new_tokens": 2, **kw})
    assert needle in one_line(e)


def test_token_ids_outside_vocab(model):
    with pytest.raises(GenerationError) as e:
        lmzoo.generate(model, torch.tensor([[1, 64]]), max_new_tokens=2)
    assert "[0, 64)" in one_line(e)


def test_cache_too_small(model):
    cache = lmzoo.KVCache(model, 1, 8)
    with pytest.raises(ContextLengthError) as e:
        model(torch.zeros((1, 9), dtype=torch.long), cache=cache)
    assert "do not fit the cache of 8 slots" in one_line(e)
    with pytest.raises(ContextLengthError):
        lmzoo.KVCache(model, 1, 17)


# --- values a config.json can carry that would load and then answer NaN or crash mid-generation ----
@pytest.mark.parametrize("change, needle", [
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, "rope_theta must be a finite number > 0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -1e4}}, "rope_theta"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}}, "rope_theta"),
    ({"rms_norm_eps": float("nan")}, "norm_eps must be a finite number > 0"),
    ({"rms_norm_eps": float("inf")}, "norm_eps"),
    ({"rms_norm_eps": 0}, "norm_eps"),
    ({"eos_token_id": 64}, "eos_token_id 64 is outside the vocabulary (0..63)"),
    ({"bos_token_id": -5}, "bos_token_id -5 is outside the vocabulary"),
    ({"pad_token_id": 1000}, "pad_token_id 1000"),
])
def test_config_values_that_cannot_be_right(ckpt, change, needle):
    from lmzoo.errors import ConfigError

    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(change)
    (ckpt / "config.json").write_text(json.dumps(cfg))  # NaN / Infinity as Python's json writes them
    with pytest.raises(ConfigError) as e:
        lmzoo.from_pretrained(ckpt)
    assert needle in one_line(e)


def test_pad_token_minus_one_means_none(ckpt):
    """LLaMA-1 conversions carry pad_token_id -1 for "no padding token" (transformers reads it so)."""
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "pad_token_id": -1}))
    model = lmzoo.from_pretrained(ckpt)
    assert model.config.pad_token_id is None
    out = lmzoo.generate(model, torch.tensor([[1, 2, 3], [4, 5, 6]]), max_new_tokens=3)
    assert out.shape[0] == 2


@pytest.mark.parametrize("kw, needle", [
    ({"n_kv_head": -3}, "n_kv_head must be a positive integer"),
    ({"n_experts": 4, "n_experts_per_tok": 6}, "n_experts_per_tok=6 must be in 1..n_experts=4"),
    ({"rotary_percentage": 1.5}, "rotary_percentage"),
    ({"embed_scale": float("nan")}, "embed_scale"),
])
def test_model_config_validates_values(kw, needle):
    from lmzoo.config import ModelConfig
    from lmzoo.errors import ConfigError

    base = dict(vocab_size=64, n_layer=2, n_embd=32, n_head=4, intermediate_size=48, max_seq_len=32)
    with pytest.raises(ConfigError) as e:
        ModelConfig(**{**base, **kw})
    assert needle in one_line(e)


@pytest.mark.parametrize("edit, needle", [
    (lambda c: [1, 2], "must hold a JSON object, got a list"),
    (lambda c: {k: v for k, v in c.items() if k != "vocab_size"}, "has no 'vocab_size', which a 'llama' checkpoint"),
    (lambda c: {**c, "dtype": "int3", "torch_dtype": "int3"}, "torch_dtype 'int3'"),
    (lambda c: {**c, "rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "'linear' needs a numeric 'factor'"),
    (lambda c: {**c, "num_attention_heads": True}, "n_head must be a positive integer, got True"),
    (lambda c: {**c, "num_hidden_layers": 10**12}, "describes a model of about"),  # refused before allocating
    (lambda c: {**c, "hidden_size": 2**20, "head_dim": 2**18}, "describes a model of about"),
])
def test_malformed_config_values(ckpt, edit, needle):
    from lmzoo.errors import LmzooError

    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(edit(cfg)))
    with pytest.raises(LmzooError) as e:
        lmzoo.from_pretrained(ckpt)
    assert needle in one_line(e)


def test_config_json_that_is_a_directory(ckpt):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    with pytest.raises(ModelNotFoundError) as e:
        lmzoo.from_pretrained(ckpt)
    assert "a directory named config.json" in one_line(e)


# --- ids and masks handed to the model or to generate ---------------------------------------------
IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


@pytest.mark.parametrize("ids, mask, needle", [
    (IDS.float(), None, "integer token ids"),
    (IDS.bool(), None, "integer token ids"),
    (IDS[0], None, "(batch, seq) tensor"),
    (IDS - 5, None, "got values in [-4, 3]"),
    (IDS + 60, None, "[0, 64) (the model's vocabulary)"),
    (IDS, torch.ones(2, 3, dtype=torch.long), "attention_mask must have input_ids' shape (2, 4)"),
    (IDS, torch.ones(2, 4, 4, dtype=torch.long), "attention_mask must have input_ids' shape"),
    (IDS, torch.tensor([[1, 1, 2, 1], [1, 1, 1, 1]]), "only 0 (padding) and 1"),
    (IDS, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]]), "rows [0] have no real token"),
])
def test_bad_ids_and_masks(model, ids, mask, needle):
    from lmzoo.errors import InputError

    calls = [lambda: model(ids, attention_mask=mask)]
    if ids.dim() == 2:  # (generate takes one unbatched row as a convenience)
        calls.append(lambda: lmzoo.generate(model, ids, attention_mask=mask, max_new_tokens=2))
    for call in calls:
        with pytest.raises(InputError) as e:
            call()
        assert needle in one_line(e)


def test_right_padded_rows_generate_their_own_tokens(model):
    """generate takes each row's real tokens (mask 1) wherever they are: a right-padded row gives what
    the row alone gives."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    batch = lmzoo.generate(model, IDS, attention_mask=mask, max_new_tokens=3)
    alone = lmzoo.generate(model, IDS[:1, :2], max_new_tokens=3)
    assert torch.equal(batch[0, : alone.shape[1]], alone[0])


# --- checkpoint files that parse but cannot be this model: one line each, before any forward -------
def _shard(ckpt, index: str | None):
    (ckpt / "model.safetensors").rename(ckpt / "model-00001-of-00001.safetensors")
    if index is not None:
        (ckpt / "model.safetensors.index.json").write_text(index)


UP = "model.layers.0.mlp.up_proj.weight"


@pytest.mark.parametrize("edit, needle", [
    (lambda d: _rewrite(d, lambda sd: sd.__setitem__(UP, sd[UP].to(torch.int32))), "holds int32 values, but"),
    (lambda d: _rewrite(d, lambda sd: sd.__setitem__(UP, sd[UP] > 0)), "holds bool values"),
    (lambda d: _shard(d, json.dumps({"weight_map": ["a"]})), "weight_map is a list; expected an object"),
    (lambda d: _shard(d, json.dumps({"weight_map": {UP: 3}})), "weight_map names 3 as shards"),
    (lambda d: _shard(d, json.dumps({"weight_map": {UP: "../../etc/passwd"}})), "'../../etc/passwd' as shards"),
    (lambda d: _shard(d, "[1]"), "not a valid index file; expected a JSON object with a weight_map"),
    (lambda d: _shard(d, "{oops"), "is not valid JSON"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "tie_word_embeddings": "no"})),
     "tie_word_embeddings = 'no'; expected true or false"),  # bool("no") is True
])
def test_checkpoint_files_that_cannot_be_this_model(ckpt, edit, needle):
    from lmzoo.errors import LmzooError

    edit(ckpt)
    with pytest.raises(LmzooError) as e:
        lmzoo.from_pretrained(ckpt)
    assert needle in one_line(e)


def test_legacy_torch_save_bin_loads(ckpt):
    """pytorch_model.bin in the pre-1.6 (non-zip) format: readable with weights_only, not mmap-able."""
    ref = lmzoo.from_pretrained(ckpt)
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (ckpt / "model.safetensors").unlink()
    m = lmzoo.from_pretrained(ckpt)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(m(ids), ref(ids))


def test_nan_weights_are_an_error_not_an_empty_answer(ckpt):
    _rewrite(ckpt, lambda sd: sd["model.norm.weight"].__setitem__(0, float("nan")))
    model = lmzoo.from_pretrained(ckpt)
    with pytest.raises(GenerationError) as e:
        lmzoo.generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    assert "logits are NaN" in one_line(e)
