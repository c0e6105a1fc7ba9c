"""NF4 (QLoRA's frozen base) against bitsandbytes: the same 4-bit codes and bitwise the same
dequantised weights; a LoRA over it gets the gradients it would get over the dequantised float
weights (the same function)."""

from __future__ import annotations

import pytest
import torch

from lmzoo.quant.layers import NF4_CODE, NF4Linear


def test_codes_and_dequantised_weights_equal_bitsandbytes():
    bnbf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96)
    ours = NF4Linear.from_linear(lin, group_size=64)
    q, state = bnbf.quantize_4bit(lin.weight.detach().float().contiguous(), blocksize=64, quant_type="nf4")
    assert torch.equal(state.code.float(), torch.tensor(NF4_CODE))
    assert torch.equal(state.absmax.view(96, 4), ours.absmax)
    theirs = bnbf.dequantize_4bit(q, state)
    assert torch.equal(theirs, ours.dequantize())
    # bitsandbytes packs the first of two neighbours in the high nibble
    flat = q.flatten()
    bnb_codes = torch.stack((flat >> 4, flat & 0xF), -1).flatten().view(96, 256)
    assert torch.equal(bnb_codes, ours.codes())


def test_lora_over_nf4_has_the_gradients_of_the_dequantised_float_base():
    from lmzoo.nn.lora import LoraLinear, Part

    torch.manual_seed(1)
    lin = torch.nn.Linear(128, 64, bias=True)
    nf4 = NF4Linear.from_linear(lin)
    dense = torch.nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        dense.weight.copy_(nf4.dequantize())
        dense.bias.copy_(nf4.bias)
    a = LoraLinear(nf4, parts=[Part("w", 0, 64)], targets=["w"], rows=None, r=4, alpha=8)
    b = LoraLinear(dense, parts=[Part("w", 0, 64)], targets=["w"], rows=None, r=4, alpha=8)
    with torch.no_grad():
        b.lora_A[0].copy_(a.lora_A[0])
        a.lora_B[0].normal_()
        b.lora_B[0].copy_(a.lora_B[0])
    x = torch.randn(3, 5, 128, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    (a(x) ** 2).sum().backward()
    (b(x2) ** 2).sum().backward()
    torch.testing.assert_close(a.lora_A[0].grad, b.lora_A[0].grad)
    torch.testing.assert_close(a.lora_B[0].grad, b.lora_B[0].grad)
    torch.testing.assert_close(x.grad, x2.grad)
    assert not any(p.requires_grad for p in nf4.parameters())
