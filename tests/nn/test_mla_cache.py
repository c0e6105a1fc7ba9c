"""MLA's compressed-latent cache: the absorbed latent-space attention equals the expanded per-head
attention (logits, greedy tokens, cached decode, padded batches) while caching kv_lora_rank + rope
values per token instead of n_head * (qk + v)."""

from __future__ import annotations

import pytest
import torch

import lmzoo
from lmzoo.errors import ConfigError
from tests.helpers import ATOL, cache_vs_recompute, greedy_ours, left_pad, random_ids
from tests.test_parity import V, build_reference


@pytest.fixture(scope="module", params=["deepseek-v2-lite", "deepseek-v3"])
def path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_reference(request.param, d)
    return d


def test_latent_equals_expanded(path):
    exp = lmzoo.from_pretrained(path, dtype=torch.float32)
    lat = lmzoo.from_pretrained(path, dtype=torch.float32, mla_cache="latent")
    assert lat.config.mla_cache == "latent"
    ids = random_ids(V, (2, 24))
    with torch.no_grad():
        assert (exp(ids) - lat(ids)).abs().max() <= ATOL
    assert torch.equal(greedy_ours(exp, ids[:, :6], 20), greedy_ours(lat, ids[:, :6], 20))
    assert cache_vs_recompute(lat, random_ids(V, (2, 30), seed=3), n_prefill=7) <= ATOL
    rows = [random_ids(V, (1, 5), seed=4)[0], random_ids(V, (1, 12), seed=5)[0]]
    ids, mask = left_pad(rows)
    assert torch.equal(greedy_ours(exp, ids, 15, attention_mask=mask), greedy_ours(lat, ids, 15, attention_mask=mask))
    # the cache really is the latent: (B, 1, L, kv_lora_rank + qk_rope_head_dim) per layer
    c = lat.config
    k = lmzoo.KVCache(lat, 2, 40).k[0]
    assert k.shape == lmzoo.KVCache(exp, 2, 40, mla_cache="latent").k[0].shape
    assert k.shape == (2, 1, 40, c.kv_lora_rank + c.qk_rope_head_dim)
    assert k.numel() < 2 * 40 * c.n_head * (c.head_dim + c.v_head_dim)


def test_mla_cache_on_a_non_mla_model_is_refused(tmp_path):
    build_reference("llama-gqa", tmp_path)
    with pytest.raises(ConfigError, match="MLA"):
        lmzoo.from_pretrained(tmp_path, mla_cache="latent")
    with pytest.raises(ConfigError, match="mla_cache"):
        lmzoo.ModelConfig(vocab_size=8, n_layer=1, n_embd=8, n_head=2, intermediate_size=8, mla_cache="tiny")
