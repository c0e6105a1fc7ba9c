"""Fixed-shape decode steps (lmzoo.runtime.compiled): the same greedy tokens as the eager path, for
plain, sliding-window, per-layer-window, learned-position, ALiBi, chunked (Llama 4), MoE and MLA models, in
left-padded batches too; torch.compile of that step (what CUDA graphs capture on GPU) checked on CPU."""

from __future__ import annotations

import pytest
import torch

import lmzoo
from lmzoo.errors import ConfigError
from tests.helpers import left_pad, random_ids
from tests.test_parity import V, build_reference

CASES = ["llama-gqa", "mistral-window", "qwen2-window-some-layers", "gpt2", "mixtral", "deepseek-v2-lite",
         "opt-350m-layout", "bloom", "llama4"]


@pytest.mark.parametrize("case", CASES)
def test_static_equals_eager(case, tmp_path):
    build_reference(case, tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    ids = random_ids(V, (2, 6))
    eager = lmzoo.generate(m, ids, max_new_tokens=20, eos_token_id=[])
    assert torch.equal(lmzoo.generate(m, ids, max_new_tokens=20, eos_token_id=[], decode="static"), eager)
    rows = [random_ids(V, (1, 3), seed=1)[0], random_ids(V, (1, 9), seed=2)[0]]
    pids, mask = left_pad(rows)
    kw = dict(max_new_tokens=16, eos_token_id=[], attention_mask=mask)
    assert torch.equal(lmzoo.generate(m, pids, decode="static", **kw), lmzoo.generate(m, pids, **kw))


@pytest.mark.slow
@pytest.mark.parametrize("quant", [None, "int8"])
def test_compiled_equals_eager(quant, tmp_path):
    """torch.compile traces through lmzoo's CPU kernels (registered as custom ops)."""
    from lmzoo.quant.layers import quantize

    build_reference("mistral-window", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    if quant:
        quantize(m, mode=quant)
    ids = random_ids(V, (2, 6))
    eager = lmzoo.generate(m, ids, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(lmzoo.generate(m, ids, max_new_tokens=12, eos_token_id=[], decode="compiled"), eager)


def test_unsupported_and_bad_values_are_clear(tmp_path):
    build_reference("llama-rope-dynamic", tmp_path)
    m = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    with pytest.raises(ConfigError, match="dynamic.*decode='eager'"):
        lmzoo.generate(m, random_ids(V, (1, 4)), max_new_tokens=2, decode="static")
    with pytest.raises(lmzoo.errors.GenerationError, match="decode must be"):
        lmzoo.generate(m, random_ids(V, (1, 4)), max_new_tokens=2, decode="fast")
