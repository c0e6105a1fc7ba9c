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

import lmzoo
from lmzoo.checkpoints.gguf_save import save_gguf
from tests.checkpoints.test_gguf_arches import AS_ARCH, V, hf_model
from tests.refs import gguf_ref

gguf = pytest.importorskip("gguf")

# families whose HF checkpoint lmzoo loads and whose GGUF architecture it writes (glm4, qwen v1
# and baichuan have no transformers class here)
FAMILIES = ["llama3.1", "mixtral", "qwen2moe", "qwen2moe-dense-layer", "qwen3moe", "phi3", "phi3-longrope",
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
QUANT_FAMILIES = ["mixtral", "qwen2moe", "phi3", "gptneox", "falcon-40b", "bloom", "stablelm2", "deepseek2-v3",
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
