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
