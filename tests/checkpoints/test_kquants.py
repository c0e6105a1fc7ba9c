"""K-quant export (Q4_K / Q5_K / Q6_K blocks, llama.cpp's Q4_K_M / Q5_K_M / Q6_K mixtures): the
vectorised encoders give the bytes of a statement-by-statement port of ggml's reference quantisers
(tests/refs/kquants_ref.py), decode within the formats' error, and an exported file holds the types
llama.cpp's quantiser chooses. Byte equality with llama.cpp itself (every tensor of two models, three
mixtures): benchmarks/gguf_kquant_check.py, RESULTS.md."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.checkpoints import kquants
from lmzoo.checkpoints.gguf_save import _k_mix, save_gguf
from tests.checkpoints.test_gguf_arches import AS_ARCH, K_MODELS, V
from tests.refs import gguf_ref
from tests.refs import kquants_ref as ref

ENCODERS = {"Q4_K": (kquants.quantize_q4_k, ref.q4_k_block, 144), "Q5_K": (kquants.quantize_q5_k, ref.q5_k_block, 176),
            "Q6_K": (kquants.quantize_q6_k, ref.q6_k_block, 210)}


def awkward_rows() -> np.ndarray:
    """Rows of two 256-blocks each: plain, all zero, all positive (min > 0 clamps to 0), one huge
    outlier, a constant sub-block, tiny values, sign-alternating."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((7, 512)).astype(np.float32) * 0.02
    rows[1] = 0
    rows[2] = np.abs(rows[2]) + 0.01
    rows[3, 100] = 3.0
    rows[4, :32] = 0.5
    rows[5] *= 1e-6
    rows[6] = np.where(np.arange(512) % 2, 0.03, -0.01)
    return rows


@pytest.mark.parametrize("kind", sorted(ENCODERS))
def test_encoder_is_the_reference_quantiser(kind):
    enc, block, size = ENCODERS[kind]
    rows = awkward_rows()
    got = enc(rows).reshape(-1, size)
    for i, x in enumerate(rows.reshape(-1, 256)):
        assert got[i].tobytes() == block(x), f"{kind} block {i}"


@pytest.mark.parametrize("kind,bound", [("Q4_K", 0.08), ("Q5_K", 0.04), ("Q6_K", 0.02)])
def test_blocks_decode_within_the_formats_error(kind, bound):
    """The gguf package's decoder and lmzoo's reader agree on the blocks, and the relative RMS error is
    what 4, 5 and 6 bits give (measured 0.071 / 0.036 / 0.018 on Gaussian weights)."""
    from lmzoo.checkpoints.gguf_quant import dequantize

    a = np.random.default_rng(1).standard_normal((64, 768)).astype(np.float32) * 0.02
    raw = ENCODERS[kind][0](a)
    theirs = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(a.shape)
    np.testing.assert_array_equal(dequantize(raw, kind, 768), theirs)
    assert np.sqrt(((theirs - a) ** 2).mean() / (a ** 2).mean()) < bound


def _table(n_layer: int, d: int, ffn: int, *, tied: bool, fused_qkv: bool = False) -> dict[str, tuple[int, ...]]:
    t = {"token_embd.weight": (49152, d)}
    for i in range(n_layer):
        p = f"blk.{i}."
        t.update({p + "attn_qkv.weight": (3 * d, d)} if fused_qkv else
                 {p + "attn_q.weight": (d, d), p + "attn_k.weight": (d // 4, d), p + "attn_v.weight": (d // 4, d)})
        t.update({p + "attn_output.weight": (d, d), p + "ffn_gate.weight": (ffn, d), p + "ffn_up.weight": (ffn, d),
                  p + "ffn_down.weight": (d, ffn)})
    if not tied:
        t["output.weight"] = (49152, d)
    return t


def test_mixture_follows_llama_cpp_rules():
    """llama.cpp's Q4_K_M choices written out by hand for a 32-layer Llama: attn_v and ffn_down of the
    first and last 4 layers and every third between get Q6_K, the head Q6_K, the token table the
    default; a fused attn_qkv goes one step up; rows that are no whole 256-blocks fall back."""
    mix = _k_mix("MOSTLY_Q4_K_M", "Q4_K", "llama", _table(32, 4096, 11008, tied=False), 1, 32)
    more = [i for i in range(32) if mix[f"blk.{i}.attn_v.weight"] == "Q6_K"]
    assert more == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(32) if mix[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == more
    assert mix["output.weight"] == "Q6_K" and mix["token_embd.weight"] == "Q4_K"
    assert {mix[f"blk.{i}.{n}.weight"] for i in range(32) for n in ("attn_q", "attn_k", "ffn_gate", "ffn_up")} == {"Q4_K"}
    assert _k_mix("MOSTLY_Q6_K", "Q6_K", "llama", _table(4, 256, 512, tied=True), 1, 4)["token_embd.weight"] == "Q6_K"
    fused = _k_mix("MOSTLY_Q4_K_M", "Q4_K", "phi3", _table(2, 256, 512, tied=False, fused_qkv=True), 1, 2)
    assert fused["blk.0.attn_qkv.weight"] == "Q5_K"
    eight = _k_mix("MOSTLY_Q4_K_M", "Q4_K", "llama", _table(2, 256, 512, tied=False), 8, 2)
    assert eight["blk.0.attn_v.weight"] == eight["blk.0.attn_k.weight"] == "Q8_0"
    assert eight["blk.0.attn_output.weight"] == "Q5_K"


def test_mixture_of_smollm2_is_llama_cpps():
    """SmolLM2-135M (n_embd 576: most rows are no whole 256-blocks, tied head): the type counts
    llama-quantize wrote for its Q4_K_M / Q5_K_M / Q6_K files (benchmarks/gguf_kquant_check.py)."""
    t = _table(30, 576, 1536, tied=True)
    t.update({f"blk.{i}.attn_k.weight": (192, 576) for i in range(30)})
    t.update({f"blk.{i}.attn_v.weight": (192, 576) for i in range(30)})

    def counts(ft, default):
        out: dict[str, int] = {}
        for k in _k_mix(ft, default, "llama", t, 1, 30).values():
            out[k] = out.get(k, 0) + 1
        return out

    assert counts("MOSTLY_Q4_K_M", "Q4_K") == {"Q4_K": 16, "Q5_0": 166, "Q6_K": 14, "Q8_0": 15}
    assert counts("MOSTLY_Q5_K_M", "Q5_K") == {"Q5_1": 166, "Q5_K": 16, "Q6_K": 14, "Q8_0": 15}
    assert counts("MOSTLY_Q6_K", "Q6_K") == {"Q6_K": 30, "Q8_0": 181}


@pytest.mark.parametrize("key", ["phi3", "qwen2moe"])
def test_export_q4_k_m(tmp_path, key):
    """An exported Q4_K_M file: every tensor in the type the mixture gives it and in the bytes its
    encoder makes of the converter-layout tensor; lmzoo reads it back to logits near the float model's."""
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(K_MODELS[key]()).eval()
    hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id = 1, 2, 0
    hf.save_pretrained(tmp_path / "hf")
    ours = lmzoo.from_pretrained(tmp_path / "hf", dtype=torch.float32, cpu_kernels=False)
    p = tmp_path / "m.gguf"
    summary = save_gguf(ours, None, p, "q4_k_m")
    assert summary.types.get("Q4_K", 0) > 0 and summary.types.get("Q6_K", 0) > 0
    _, _, want = gguf_ref.hf_to_gguf(hf, AS_ARCH.get(key))
    for t in gguf.GGUFReader(str(p)).tensors:
        a = np.ascontiguousarray(want[t.name], dtype=np.float32)
        kind = t.tensor_type.name
        if kind == "F32":
            continue
        if kind in ENCODERS:
            expect = ENCODERS[kind][0](a.reshape(-1, a.shape[-1]))
        else:
            expect = gguf.quants.quantize(a, t.tensor_type)
        assert np.asarray(t.data).tobytes() == expect.tobytes(), t.name
        if t.name.endswith("attn_qkv.weight"):
            assert kind == "Q5_K"
        if t.name == "output.weight":
            assert kind == "Q6_K"
    back = lmzoo.from_pretrained(p, cpu_kernels=False)
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(ids), back(ids)
    # 4-6 bit weights of a random model: 0.1-0.15 measured; a misread block or scale gives errors of order 1
    assert ((a - b).square().mean() / a.square().mean()).sqrt() < 0.3
