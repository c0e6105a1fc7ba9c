"""The SFT loss against transformers' own loss, packing against unpacked examples, and the chunked
cross-entropy against the plain one — at the loss and at the gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lmzoo
from lmzoo.train.data import IGNORE, Example, collate
from lmzoo.train.loop import SFTObjective
from lmzoo.train.loss import sequence_logprobs, token_losses_sum
from tests.test_parity import V, build_reference


@pytest.fixture(scope="module", params=["llama-gqa", "gpt-neox-parallel", "bloom", "qwen2"])
def pair(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    ref = build_reference(request.param, d)
    return ref, lmzoo.from_pretrained(d, dtype=torch.float32)


def _example(seed: int, n: int, prompt: int) -> Example:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n,), generator=g).tolist()
    targets = [ids[t + 1] if t + 1 >= prompt else IGNORE for t in range(n - 1)] + [IGNORE]
    return Example(ids, targets)


def test_loss_equals_transformers_with_labels(pair):
    ref, ours = pair
    ex = _example(0, 14, prompt=5)
    labels = torch.tensor([[-100] * 5 + ex.ids[5:]])
    want = ref(torch.tensor([ex.ids]), labels=labels).loss
    b = collate([ex], [[0]])
    total, _ = SFTObjective().loss(ours, b)
    got = total / SFTObjective().units(b)
    assert abs(float(got) - float(want)) < 1e-5


def test_packed_equals_unpacked_loss_and_gradient(pair):
    _, ours = pair
    exs = [_example(1, 9, 3), _example(2, 6, 2), _example(3, 11, 4)]
    obj = SFTObjective(loss_chunk=4)

    def loss_and_grads(batch_rows):
        ours.zero_grad(set_to_none=True)
        total = sum(obj.loss(ours, collate(exs, [r]))[0] for r in batch_rows)
        total.backward()
        return float(total), {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}

    for p in ours.parameters():
        p.requires_grad_(True)
    packed_loss, packed_g = loss_and_grads([[0, 1, 2]])
    alone_loss, alone_g = loss_and_grads([[0], [1], [2]])
    assert abs(packed_loss - alone_loss) < 1e-4 * max(1, abs(alone_loss))
    assert packed_g.keys() == alone_g.keys()
    for n in alone_g:
        torch.testing.assert_close(packed_g[n], alone_g[n], atol=1e-5, rtol=1e-4, msg=n)


def test_packed_logits_equal_each_alone(pair):
    _, ours = pair
    exs = [_example(4, 7, 1), _example(5, 5, 1)]
    b = collate(exs, [[0, 1]])
    with torch.no_grad():
        packed = ours(b.ids, segment_ids=b.segments)
        for s, ex in enumerate(exs):
            alone = ours(torch.tensor([ex.ids]))
            torch.testing.assert_close(packed[0][b.segments[0] == s], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale,bias", [(1.0, False), (0.7, True)])
def test_fused_chunked_cross_entropy_equals_plain(scale, bias):
    """Loss and every gradient (input, head weight, head bias, the norm before the head) as autograd's."""
    from types import SimpleNamespace

    torch.manual_seed(0)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(logit_scale=scale)
            self.norm = torch.nn.LayerNorm(8)
            self.lm_head = torch.nn.Linear(8, 50, bias=bias)

        def head_input(self, h):
            return self.norm(h)

        def logits(self, h):
            return self.lm_head(self.head_input(h)) * scale

    m = M()
    h = torch.randn(2, 13, 8, requires_grad=True)
    y = torch.randint(0, 50, (2, 13))
    y[0, :4] = IGNORE
    total, n = token_losses_sum(m, h, y, chunk=5)
    (total * 0.5).backward()
    got = [h.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    h.grad = None
    m.zero_grad()
    plain = F.cross_entropy(m.logits(h).reshape(-1, 50), y.reshape(-1), ignore_index=IGNORE, reduction="sum")
    (plain * 0.5).backward()
    want = [h.grad] + [p.grad for p in m.parameters()]
    assert n == int((y != IGNORE).sum())
    torch.testing.assert_close(total, plain)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(token_losses_sum(m, h, y, chunk=3)[0], plain)  # the evaluation path
        lp = sequence_logprobs(m, h, y, chunk=4)
        want = torch.stack([-F.cross_entropy(m.logits(h[b]), y[b], ignore_index=IGNORE, reduction="sum")
                            for b in range(2)])
    torch.testing.assert_close(lp, want)


def test_fused_cross_entropy_under_bf16_autocast_equals_plain():
    """Under autocast (bf16 on the CPU here, as on CUDA) the head's matmuls run in bf16 and the softmax in
    float32, as autocast runs the unfused loss: loss and gradients agree with it to bf16 rounding (within
    0.5% of each tensor's norm), and with float32 within 1%."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    head = torch.nn.Linear(64, 300, bias=False)
    h = torch.randn(3, 40, 64, requires_grad=True)
    y = torch.randint(0, 300, (3, 40))
    y[:, :7] = IGNORE
    m = SimpleNamespace(config=SimpleNamespace(logit_scale=1.0), lm_head=head, head_input=lambda x: x,
                        logits=head)

    def run(fused: bool, autocast: bool):
        h.grad, head.weight.grad = None, None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if fused:
                total, _ = token_losses_sum(m, h, y, chunk=16)
            else:
                total = F.cross_entropy(head(h).reshape(-1, 300).float(), y.reshape(-1), ignore_index=IGNORE,
                                        reduction="sum")
        total.backward()
        return total.detach(), h.grad.clone(), head.weight.grad.clone()

    fused, plain, exact = run(True, True), run(False, True), run(False, False)
    assert fused[0].dtype == torch.float32 and fused[1].dtype == h.dtype and fused[2].dtype == torch.float32

    def rel(a, b):  # relative error of the whole tensor
        return float((a - b).norm() / b.norm())

    assert max(rel(a, b) for a, b in zip(fused, plain)) < 5e-3
    assert max(rel(a, b) for a, b in zip(fused, exact)) < 1e-2
    assert not torch.equal(fused[2], exact[2])  # the bf16 products really ran


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path, monkeypatch):
    """A checkpoint that cannot be written is one clear error; the previous checkpoint stays whole."""
    import errno

    import safetensors.torch

    from lmzoo.train.loop import TrainConfig, Trainer, TrainError

    build_reference("llama-gqa", tmp_path / "m")
    model = lmzoo.from_pretrained(tmp_path / "m", dtype=torch.float32)
    from lmzoo.checkpoints.peft import add_lora

    add_lora(model, targets="q,v", r=2)
    exs = [_example(i, 10, 3) for i in range(4)]
    t = Trainer(model, TrainConfig(max_steps=2, batch_size=2, seq_len=32, lr=1e-3), exs, out_dir=tmp_path / "run",
                progress=False)
    t.fit()  # writes step-000002
    before = (tmp_path / "run" / "checkpoints" / "step-000002" / "trainable.safetensors").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    t.step = 3
    with pytest.raises(TrainError, match="No space left on device.*step-000002 is intact"):
        t.save_checkpoint()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]
    assert (root / "step-000002" / "trainable.safetensors").read_bytes() == before


def test_activation_checkpointing_keeps_loss_and_gradients(tmp_path):
    from lmzoo.train.loop import checkpoint_blocks

    build_reference("llama-gqa", tmp_path)
    model = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    for p in model.parameters():
        p.requires_grad_(True)
    b = collate([_example(7, 12, 3), _example(8, 9, 2)], [[0, 1]])

    def run():
        model.zero_grad(set_to_none=True)
        total, _ = SFTObjective().loss(model, b)
        total.backward()
        return float(total), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_loss, plain = run()
    checkpoint_blocks(model)
    ckpt_loss, ckpt = run()
    assert ckpt_loss == pytest.approx(plain_loss, abs=1e-6)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_frozen_base_held_in_bf16_computes_what_autocast_does(pair):
    """Holding a LoRA base's frozen linear weights in bf16 (the trainer does it under --bf16) changes no
    value autocast computes; embeddings (and a head tied to them) stay float32; restore() gives the
    weights their dtype back."""
    import copy

    from lmzoo.checkpoints.peft import add_lora
    from lmzoo.train.loop import hold_frozen_linears

    model = copy.deepcopy(pair[1])
    torch.manual_seed(0)
    add_lora(model, targets="all-linear", r=4, alpha=8)
    for lora in (m for m in model.modules() if hasattr(m, "lora_B")):
        for B in lora.lora_B:
            torch.nn.init.normal_(B, std=0.02)  # a non-zero update, so the adapters take part
    ids = torch.randint(3, V, (2, 9), generator=torch.Generator().manual_seed(7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(ids)
        restore = hold_frozen_linears(model, torch.bfloat16)
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    frozen = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad]
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert frozen and all(w.dtype == (torch.float32 if id(w) in tables else torch.bfloat16) for w in frozen)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    restore()
    assert all(p.dtype == torch.float32 for p in model.parameters())
