"""A GGUF file is checked against its own metadata, on both load paths (floats, and the file's
blocks kept quantised): block_count against the blk.N tensors, size fields positive, every tensor
used, every shape as the metadata implies. Each mutation of a valid file is one row; each gives one
line naming the field or tensor, never a silently different model or an error from inside torch."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import lmzoo
from lmzoo.errors import CheckpointError, ConfigError
from tests.checkpoints.test_gguf import KV, D, H, I, L, gguf_tensors, hf_model, write_tensor

META = {"block_count": L, "embedding_length": D, "attention.head_count": H, "attention.head_count_kv": KV,
        "feed_forward_length": I}


def write(path, tensors: dict[str, np.ndarray], meta: dict) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in {**META, **meta}.items():
        w.add_uint32("llama." + k, v)
    w.add_context_length(64)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    rng = np.random.default_rng(0)
    for name, a in tensors.items():
        write_tensor(w, name, a, "Q8_0", rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tensors():
    return gguf_tensors(hf_model())


def zeros(*shape):
    return np.zeros(shape, np.float32)


CASES = [  # (id, metadata changes, tensor changes (None = drop), message)
    ("one-block-short", {"block_count": L - 1}, {}, f"block_count = {L - 1} but the file holds blk.0 - blk.{L - 1}"),
    ("one-block-more", {"block_count": L + 1}, {}, f"block_count = {L + 1} but the file holds"),
    ("block-count-4e9", {"block_count": 4_000_000_000}, {}, "block_count = 4000000000; expected a positive integer"),
    ("head-count-0", {"attention.head_count": 0}, {}, "head_count = 0; expected a positive integer"),
    ("kv-heads-0", {"attention.head_count_kv": 0}, {}, "head_count_kv = 0; expected a positive integer"),
    ("width-0", {"embedding_length": 0}, {}, "embedding_length = 0; expected a positive integer"),
    ("width-577", {"embedding_length": 577}, {}, "embedding_length = 577 is not a multiple of"),
    ("heads-not-dividing", {"attention.head_count": 3}, {}, "is not a multiple of llama.attention.head_count = 3"),
    ("width-512", {"embedding_length": 512}, {}, "shape mismatch"),
    ("kv-heads-3", {"attention.head_count_kv": 3}, {}, "n_head=4 must be a multiple of n_kv_head=3"),
    ("extra-tensor", {}, {"blk.0.foo.weight": zeros(D, D)}, "1 tensor(s) the config does not use"),
    ("missing-tensor", {}, {"blk.1.ffn_up.weight": None}, "blk.1.ffn_up.weight"),
    ("fewer-rows", {}, {"blk.1.ffn_up.weight": zeros(I // 2, D)}, "shape mismatch: blk.1.ffn_gate.weight"),
    ("fewer-columns", {}, {"blk.1.attn_v.weight": zeros(D, D // 2)}, "shape mismatch: blk.1.attn_q.weight"),
    ("norm-width", {}, {"blk.1.attn_norm.weight": zeros(D // 2)}, "shape mismatch: blk.1.attn_norm.weight"),
]


@pytest.mark.parametrize("keep_quantized", [False, True], ids=["float", "blocks"])
@pytest.mark.parametrize("meta, changes, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_metadata_and_tensors_must_agree(tmp_path, tensors, keep_quantized, meta, changes, needle):
    t = {k: v for k, v in {**tensors, **changes}.items() if v is not None}
    write(tmp_path / "m.gguf", t, meta)
    with pytest.raises((CheckpointError, ConfigError)) as e:
        lmzoo.from_pretrained(tmp_path / "m.gguf", keep_quantized=keep_quantized)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("keep_quantized", [False, True], ids=["float", "blocks"])
def test_the_valid_file_loads(tmp_path, tensors, keep_quantized):
    write(tmp_path / "m.gguf", tensors, {})
    m = lmzoo.from_pretrained(tmp_path / "m.gguf", keep_quantized=keep_quantized)
    assert m.config.n_layer == L
