"""Parity harness shared by the family tests: build a tiny random HF reference, perturb every
parameter and float buffer (random init leaves norms at 1 and biases at 0, which hides bugs), save it
with `save_pretrained`, load it through `lmzoo.from_pretrained`, and compare."""

from __future__ import annotations

import torch

import lmzoo

ATOL = 1e-4


@torch.no_grad()
def perturb_(model: torch.nn.Module, *, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    # persistent float buffers travel with the checkpoint and are perturbed too; non-persistent ones
    # (RoPE's inv_freq) are recomputed from the config on load, so perturbing them would desync
    state = model.state_dict(keep_vars=True)
    buffers = [b for name, b in model.named_buffers() if name in state and b.is_floating_point()]
    for t in list(model.parameters()) + buffers:
        if t.is_floating_point() and t.numel():
            t.add_(torch.randn(t.shape, generator=g, dtype=t.dtype) * scale)
    return model


def save_reference(model, path) -> str:
    model.save_pretrained(path)
    return str(path)


def random_ids(vocab: int, shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_logit_diff(ref, ours, ids: torch.Tensor) -> float:
    a = ref(ids).logits.float()
    b = ours(ids).float()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


@torch.no_grad()
def greedy_ref(ref, ids: torch.Tensor, n: int, attention_mask=None) -> torch.Tensor:
    if attention_mask is None:  # explicit: HF would otherwise treat id == pad_token_id as padding
        attention_mask = torch.ones_like(ids)
    out = ref.generate(
        ids, attention_mask=attention_mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
        eos_token_id=None, pad_token_id=0,
    )
    return out[:, ids.shape[1]:]


def greedy_ours(model, ids: torch.Tensor, n: int, attention_mask=None) -> torch.Tensor:
    return lmzoo.generate(model, ids, max_new_tokens=n, eos_token_id=[], attention_mask=attention_mask)


@torch.no_grad()
def cache_vs_recompute(model, ids: torch.Tensor, n_prefill: int) -> float:
    """Max diff between logits from prefill + one-token cached steps and one full forward."""
    full = model(ids)
    cache = lmzoo.KVCache(model, ids.shape[0], ids.shape[1])
    steps = [model(ids[:, :n_prefill], cache=cache)]
    for t in range(n_prefill, ids.shape[1]):
        steps.append(model(ids[:, t : t + 1], cache=cache))
    return float((torch.cat(steps, dim=1) - full).abs().max())


def left_pad(seqs: list[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = s
        mask[i, T - len(s):] = 1
    return ids, mask
