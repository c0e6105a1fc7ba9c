"""GGUF loading: every supported tensor type, the Q/K row permutation, tied and untied heads, bad
files. Files are written here with the `gguf` package's writer from a tiny model; the reference is
transformers (for float weights) or the independent numpy implementation in tests/refs/gguf_ref.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.errors import CheckpointError, UnsupportedModelError
from lmzoo.quant.layers import QuantEmbedding
from tests.helpers import greedy_ours, greedy_ref, perturb_
from tests.refs import gguf_ref

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType

D, I, H, KV, L, V = 256, 256, 4, 2, 2, 96  # K-quants need rows of 256


def hf_model(tied: bool = False):
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=I, num_hidden_layers=L,
                         num_attention_heads=H, num_key_value_heads=KV, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return perturb_(tf.LlamaForCausalLM(cfg), scale=0.05).eval()


NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """HF state dict -> GGUF names and llama.cpp's row order (q/k permuted)."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.detach().float().numpy()
        if k == "model.embed_tokens.weight":
            out["token_embd.weight"] = a
        elif k == "model.norm.weight":
            out["output_norm.weight"] = a
        elif k == "lm_head.weight":
            if not model.config.tie_word_embeddings:
                out["output.weight"] = a
        else:
            i = k.split(".")[2]
            mod = ".".join(k.split(".")[3:-1])
            if mod.endswith("q_proj"):
                a = gguf_ref.permute_qk(a, H)
            elif mod.endswith("k_proj"):
                a = gguf_ref.permute_qk(a, KV)
            out[f"blk.{i}.{NAMES[mod]}.weight"] = a
    return out


def write_gguf(path, tensors: dict[str, np.ndarray], kind: str, *, arch: str = "llama", rng=None) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_feed_forward_length(I)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D // H)
    for name, a in tensors.items():
        if kind == "Q4_K_M":  # llama.cpp's mix: Q6_K for attn_v / ffn_down, Q4_K elsewhere
            k = "Q6_K" if ("attn_v" in name or "ffn_down" in name) else "Q4_K"
            write_tensor(w, name, a, k, rng)
        else:
            write_tensor(w, name, a, kind, rng)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_tensor(w, name: str, a: np.ndarray, kind: str, rng) -> None:
    if a.ndim == 1 or kind == "F32":
        w.add_tensor(name, a.astype(np.float32))
    elif kind == "F16":
        w.add_tensor(name, a.astype(np.float16))
    elif kind in K_SCALE_FIELDS:
        # the gguf package cannot quantise K-quants: random (valid) blocks with sane scales
        w.add_tensor(name, random_blocks(rng, kind, *a.shape), raw_dtype=T[kind])
    else:
        w.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), T[kind]), raw_dtype=T[kind])


# byte offsets of each K-quant block's f16 scale fields (d, dmin), set to small values in random blocks
K_SCALE_FIELDS = {"Q4_K": (0, 2), "Q6_K": (208,), "Q5_K": (0, 2), "Q3_K": (108,), "Q2_K": (80, 82)}


def random_blocks(rng, kind: str, rows: int, cols: int, d: float = 0.002) -> np.ndarray:
    qk, size = gguf.GGML_QUANT_SIZES[T[kind]]
    raw = rng.integers(0, 256, (rows, cols // qk * size), dtype=np.uint8)
    small = np.frombuffer(np.float16(d).tobytes(), np.uint8)
    for o in K_SCALE_FIELDS.get(kind, (0,) if kind in ("Q5_0", "Q8_0", "Q4_0") else (0, 2)):
        raw.reshape(-1, size)[:, o:o + 2] = small
    return raw


def test_f32_matches_transformers(tmp_path):
    ref = hf_model()
    p = tmp_path / "m.gguf"
    write_gguf(p, gguf_tensors(ref), "F32")
    ours = lmzoo.from_pretrained(p)
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max() <= 1e-4
    assert torch.equal(greedy_ours(ours, ids, 20), greedy_ref(ref, ids, 20))


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q4_K_M"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("keep_quantized", [True, False])
def test_quantised_types_match_numpy_reference(tmp_path, kind, tied, keep_quantized):
    p = tmp_path / f"m-{kind}.gguf"
    write_gguf(p, gguf_tensors(hf_model(tied)), kind, rng=np.random.default_rng(0))
    ours = lmzoo.from_pretrained(p, keep_quantized=keep_quantized)
    assert ours.config.tie_embeddings == tied
    # block formats stay integer codes (no float copy), half formats half precision, the token table
    # too (a tied head's layer is the table: one layer, not a copy)
    half = kind in ("F16", "BF16")
    kept = [m for m in ours.modules() if type(m).__name__ in (("HalfLinear",) if half else ("Int8Linear", "Int4Linear"))]
    expected = 4 * L + 1 + (2 * L if kind == "Q4_K_M" else 0) + (0 if tied else 1)  # mixed qkv: three parts
    assert len(kept) == (expected if keep_quantized else 0)
    assert isinstance(ours.embed, QuantEmbedding) == keep_quantized
    if keep_quantized and tied:
        assert ours.embed.table is ours.lm_head
    if keep_quantized and half:
        assert {m.w.dtype for m in kept} == {torch.float16 if kind == "F16" else torch.bfloat16}
    meta, w = gguf_ref.load_weights(p)
    ids = [3, 17, 42, 5, 88, 1, 60, 9]
    ref = gguf_ref.llama_logits(meta, w, ids)
    with torch.no_grad():
        got = ours(torch.tensor([ids]))[0].double().numpy()
        decode = ours(torch.tensor([ids[:1]]))[0].double().numpy()  # one row: the CPU kernel path
    scale = max(1.0, np.abs(ref).max())
    assert np.abs(got - ref).max() <= 1e-4 * scale
    assert np.abs(decode - gguf_ref.llama_logits(meta, w, ids[:1])).max() <= 1e-4 * scale


def test_truncated_file(tmp_path):
    p = tmp_path / "m.gguf"
    write_gguf(p, gguf_tensors(hf_model()), "Q8_0")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError) as e:
        lmzoo.from_pretrained(p)
    assert "\n" not in str(e.value) and "m.gguf" in str(e.value)


def test_bad_magic(tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        lmzoo.from_pretrained(p)


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "m.gguf"
    write_gguf(p, gguf_tensors(hf_model()), "F32", arch="mamba")
    with pytest.raises(UnsupportedModelError, match="'mamba'.*supported: .*gptneox.*llama.*qwen3moe"):
        lmzoo.from_pretrained(p)


@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K_M"])
def test_chunked_dequantisation_matches_numpy_reference(tmp_path, kind):
    """GGUFFile.array decodes a few rows at a time; chunk boundaries (here every 1-2 rows, one a
    partial chunk at the end) must not change a value."""
    from lmzoo.checkpoints.gguf_file import GGUFFile

    p = tmp_path / "m.gguf"
    write_gguf(p, gguf_tensors(hf_model()), kind, rng=np.random.default_rng(0))
    f = GGUFFile(p)
    r = gguf.GGUFReader(str(p))
    for t in r.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        ref = gguf_ref.dequantize(np.asarray(t.data), t.tensor_type.name, int(np.prod(shape))).reshape(shape)
        for chunk in (300, 1 << 22):
            assert np.array_equal(f.array(f.tensors[t.name], chunk_elements=chunk), ref), (t.name, chunk)


def test_block_type_table_matches_the_gguf_package():
    from lmzoo.checkpoints.gguf_file import BLOCK_TYPES

    for type_id, (name, block, size) in BLOCK_TYPES.items():
        t = gguf.GGMLQuantizationType(type_id)
        assert (t.name, (block, size)) == (name, gguf.GGML_QUANT_SIZES[t])


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_block_split_kernel_equals_numpy_codes(kind):
    """Loading splits Q8_0 / Q4_0 / Q4_1 blocks into codes, scales and mins with one kernel pass (rows
    in a given order, written into a slice of the layer's buffers): the same bits as numpy's `_codes`."""
    from lmzoo.checkpoints.gguf_quant import SPLIT, _codes
    from lmzoo.quant.kernels import cpu_kernels

    k = cpu_kernels()
    if k is None:
        pytest.skip("no CPU kernels here: loading takes the numpy path")
    bs, qo, has_min = SPLIT[kind]
    raw = random_blocks(np.random.default_rng(2), kind, 10, 320, d=0.01)
    order = np.array([3, 0, 9, 9, 4, 1])
    width, q_ref, d_ref, m_ref = _codes(raw[order], kind, 320)
    q = torch.zeros(8, q_ref.shape[1], dtype=torch.uint8)
    d, m = torch.zeros(8, 10, dtype=torch.float16), torch.zeros(8, 10, dtype=torch.float16)
    k.split_blocks(torch.from_numpy(raw), bs, qo, torch.from_numpy(order), q[1:7], d[1:7], m[1:7] if has_min else None)
    assert np.array_equal(q[1:7].numpy().view(q_ref.dtype), q_ref)
    assert np.array_equal(d[1:7].numpy().view(np.uint16), np.ascontiguousarray(d_ref).view(np.uint16))
    if has_min:
        assert np.array_equal(m[1:7].numpy().view(np.uint16), np.ascontiguousarray(m_ref).view(np.uint16))
    assert not q[0].any() and not q[7].any() and not d[0].any() and not d[7].any()  # only its slice written
    with pytest.raises(RuntimeError, match="outside"):
        k.split_blocks(torch.from_numpy(raw), bs, qo, torch.tensor([0, 10]), q[:2], d[:2], m[:2] if has_min else None)


@pytest.mark.parametrize("chunk", [16, 1024])
@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1"])
def test_kernel_load_equals_numpy_load(tmp_path, kind, chunk, monkeypatch):
    """A whole model (q/k rows permuted, fused qkv and gate|up from several tensors, a tied head and
    table) loads into the same buffers through the split kernel as through numpy. On tiled kernel
    builds the layers come packed (rows split and packed `chunk` at a time, chunks crossing the
    tensors' boundaries), holding no row-major copy, and multiply to the same bits."""
    from lmzoo.checkpoints import gguf_quant
    from lmzoo.quant.kernels import cpu_kernels
    from lmzoo.quant.layers import Int4Linear, Int8Linear

    monkeypatch.setattr(gguf_quant, "TILE_CHUNK", chunk)
    p = tmp_path / f"m-{kind}.gguf"
    write_gguf(p, gguf_tensors(hf_model(tied=True)), kind, rng=np.random.default_rng(0))
    fast = lmzoo.from_pretrained(p, keep_quantized=True)
    layers = [m for m in fast.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    tiled = cpu_kernels() is not None and cpu_kernels().isa() != "portable"
    assert layers and all(("tiles_q" in m._buffers) == tiled and ("q" in m._buffers) != tiled for m in layers)
    if tiled and kind == "Q4_0":  # no mins kept
        assert all(m._buffers["tiles_extra"].numel() == 0 for m in layers)
    monkeypatch.setattr(gguf_quant, "cpu_kernels", lambda: None)
    slow = lmzoo.from_pretrained(p, keep_quantized=True)
    a, b = fast.state_dict(), slow.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    ids = torch.randint(0, fast.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(fast(ids), slow(ids))
        fast.to("cpu")  # a no-op keeps the tiles; a dtype change unpacks them
        assert all(("tiles_q" in m._buffers) == tiled for m in layers)
        fast.to(torch.float64)
        assert all("q" in m._buffers and "tiles_q" not in m._buffers for m in layers)


NEW_BLOCKS = ["Q5_0", "Q5_1", "Q5_K", "Q3_K", "Q2_K"]


@pytest.mark.parametrize("kind", NEW_BLOCKS)
def test_block_decoding_is_bitwise_the_gguf_packages(kind):
    """lmzoo's own decoders (and, where the codes fit one, the integer layer made from the blocks)
    give exactly the gguf package's float32 values."""
    from lmzoo.checkpoints.gguf_quant import QUANTISED, _codes, dequantize
    from lmzoo.quant.layers import Int8Linear

    raw = random_blocks(np.random.default_rng(1), kind, 12, 768, d=0.01)
    ref = gguf.quants.dequantize(raw, T[kind])
    ours = dequantize(raw, kind, 768)
    assert ours.dtype == np.float32 and np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    if kind in QUANTISED:
        width, q, scale, mn = _codes(raw, kind, 768)
        assert width == "int8" and mn is None
        m = Int8Linear(768, 12, group_size=768 // scale.shape[1])
        m.q.copy_(torch.from_numpy(np.ascontiguousarray(q)))
        m.scale.copy_(torch.from_numpy(np.ascontiguousarray(scale)))
        assert torch.equal(m.dequantize(), torch.from_numpy(ref))


@pytest.mark.parametrize("kind", NEW_BLOCKS)
@pytest.mark.parametrize("keep_quantized", [True, False])
def test_new_block_types_load(tmp_path, kind, keep_quantized):
    """A model stored in each new block type matches the plain LLaMA forward on the gguf package's
    dequantisation of its tensors (Q5_0 / Q3_K stay integer layers when kept)."""
    p = tmp_path / f"m-{kind}.gguf"
    write_gguf(p, gguf_tensors(hf_model()), kind, rng=np.random.default_rng(0))
    ours = lmzoo.from_pretrained(p, keep_quantized=keep_quantized)
    kept = [m for m in ours.modules() if type(m).__name__ == "Int8Linear"]
    assert len(kept) == (4 * L + 2 if keep_quantized and kind in ("Q5_0", "Q3_K") else 0)  # + the token table
    r = gguf.GGUFReader(str(p))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    w = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        a = a.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
        if t.name.endswith("attn_q.weight"):
            a = gguf_ref.unpermute_qk(a, H)
        elif t.name.endswith("attn_k.weight"):
            a = gguf_ref.unpermute_qk(a, KV)
        w[t.name] = a
    ids = [3, 17, 42, 5, 88, 1, 60, 9]
    ref = gguf_ref.llama_logits(meta, w, ids)
    with torch.no_grad():
        got = ours(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
