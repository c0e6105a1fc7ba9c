"""The CPU GEMV kernel path computes what F.linear computes."""

import copy

import pytest
import torch
from torch import nn

import lmzoo
from lmzoo.accelerate import GemvLinear, use_cpu_kernels
from lmzoo.kernels import cpu_kernels


@pytest.mark.parametrize("rows", [1, 5, 16, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_linear_matches_f_linear(rows, bias):
    torch.manual_seed(0)
    lin = nn.Linear(100, 37, bias=bias)  # K not a multiple of 32: exercises the scalar tail
    fast = copy.deepcopy(lin)
    fast.__class__ = GemvLinear
    x = torch.randn(rows, 100)
    with torch.inference_mode():
        assert (fast(x) - lin(x)).abs().max() < 1e-5
        assert (fast(x[None]) - lin(x[None])).abs().max() < 1e-5


def test_model_transform_keeps_results_and_state_dict():
    assert cpu_kernels() is not None
    cfg = lmzoo.ModelConfig(vocab_size=97, n_layer=2, n_embd=48, n_head=6, n_kv_head=2, intermediate_size=80)
    torch.manual_seed(0)
    m = lmzoo.Transformer(cfg).eval()
    f = use_cpu_kernels(copy.deepcopy(m))
    assert any(type(x) is GemvLinear for x in f.modules())
    assert f.state_dict().keys() == m.state_dict().keys()
    ids = torch.randint(0, 97, (2, 11))
    assert torch.equal(lmzoo.generate(m, ids, max_new_tokens=12, eos_token_id=[]),
                       lmzoo.generate(f, ids, max_new_tokens=12, eos_token_id=[]))
