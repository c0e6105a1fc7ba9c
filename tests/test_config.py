"""ModelConfig validation and serialisation."""

import pytest
import torch

import lmzoo
from lmzoo.config import ModelConfig, RopeScaling
from lmzoo.errors import ConfigError

BASE = dict(vocab_size=100, n_layer=2, n_embd=64, n_head=8, intermediate_size=128)


@pytest.mark.parametrize("over,needle", [
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(n_embd=60), "not divisible by n_head"),
    (dict(head_dim=7), "even"),
    (dict(norm="batchnorm"), "norm='batchnorm'"),
    (dict(mlp="tanh"), "mlp='tanh'"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(sliding_window=4, sliding_window_layers=(5,)), "outside 0..1"),
    (dict(rope_scaling=dict(kind="yarn", factor=4.0)), "original_max_position"),
    (dict(rope_scaling=dict(kind="ntk")), "not one of"),
])
def test_invalid_configs(over, needle):
    with pytest.raises(ConfigError, match=needle):
        ModelConfig(**{**BASE, **over})


def test_json_round_trip():
    cfg = ModelConfig(**BASE, n_kv_head=2, sliding_window=8, sliding_window_layers=(1,), eos_token_id=[2, 5],
                      rope_scaling=RopeScaling(kind="llama3", factor=8.0, original_max_position=64))
    import json

    again = ModelConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_bananas": 8})


def test_derived_fields():
    cfg = ModelConfig(**BASE, n_kv_head=2, sliding_window=8, sliding_window_layers=(1,))
    assert (cfg.head_dim, cfg.q_size, cfg.kv_size) == (8, 64, 16)
    assert cfg.layer_window(0) is None and cfg.layer_window(1) == 8
    # the meta-device model has exactly the parameters the config describes
    with torch.device("meta"):
        m = lmzoo.Transformer(cfg)
    n = sum(p.numel() for p in m.parameters())
    d, I, V = 64, 128, 100
    per_layer = d * (64 + 2 * 16) + 64 * d + 3 * d * I + 2 * d
    assert n == V * d + 2 * per_layer + d + V * d
