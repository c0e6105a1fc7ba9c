"""The CPU GEMV kernel path computes what F.linear computes, and never stands in for a product
autograd must record: a model loaded with the kernels trains to the same gradients as without."""

import copy

import pytest
import torch
from torch import nn

import lmzoo
from lmzoo.quant.gemv import GemvLinear, use_cpu_kernels
from lmzoo.quant.kernels import cpu_kernels


@pytest.mark.parametrize("rows", [1, 5, 16, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_linear_matches_f_linear(rows, bias, monkeypatch):
    import lmzoo.quant.gemv as A
    from tests.quant.test_layers import CountingKernels

    counter = CountingKernels(cpu_kernels())
    monkeypatch.setattr(A, "cpu_kernels", lambda: counter)
    torch.manual_seed(0)
    lin = nn.Linear(100, 37, bias=bias)  # K not a multiple of 32: exercises the scalar tail
    fast = copy.deepcopy(lin)
    fast.__class__ = GemvLinear
    x = torch.randn(rows, 100)
    with torch.inference_mode():
        assert (fast(x) - lin(x)).abs().max() < 1e-5
        assert (fast(x[None]) - lin(x[None])).abs().max() < 1e-5
    assert counter.calls == (2 if rows <= A.GEMV_MAX_ROWS else 0)  # 17 rows: BLAS, by design


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


@pytest.mark.parametrize("case", ["mixtral", "deepseek-v2-lite", "llama-gqa"])
def test_training_gradients_equal_without_kernels(case, tmp_path):
    """Loaded with the defaults (kernels on), a model's loss and every parameter's gradient equal
    those of the same checkpoint loaded without kernels, including MoE experts that see few rows."""
    from tests.test_parity import V, build_reference

    build_reference(case, tmp_path)
    fast = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    plain = lmzoo.from_pretrained(tmp_path, dtype=torch.float32, cpu_kernels=False)
    assert any(type(m) is GemvLinear for m in fast.modules())
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for m in (fast, plain):
        m.zero_grad()
        logits = m(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for n, g in grads[1].items():
        assert grads[0][n] is not None and g is not None, n
        torch.testing.assert_close(grads[0][n], g, atol=1e-6, rtol=1e-5, msg=n)


def test_quantised_layer_passes_input_gradients():
    """Int8/Int4 layers (frozen codes) give the input gradient of their dequantised weight, as a
    LoRA on top of a quantised base needs; the kernel path would give none."""
    from lmzoo.quant.layers import Int4Linear, Int8Linear

    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    for cls in (Int8Linear, Int4Linear):
        q = cls.from_linear(lin)
        x = torch.randn(3, 64, requires_grad=True)
        q(x).square().sum().backward()
        x2 = x.detach().clone().requires_grad_()
        torch.nn.functional.linear(x2, q.dequantize(), q.bias).square().sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
