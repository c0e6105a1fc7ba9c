"""Smoke test: every catalog architecture, shrunk to a tiny width but with its switches kept (norms,
positions, MoE routing, MLA, sliding windows, prefix LM, query layer, ...), builds and runs a forward
and a cached two-step decode without error, with finite logits equal to a full recompute."""

from __future__ import annotations

import pytest
import torch

import lmzoo
import lmzoo.catalog as C
from lmzoo.nn.transformer import Transformer

LAYER_TUPLES = ("moe_layers", "nope_layers", "chunked_layers", "qk_norm_layers", "sliding_window_layers")


def tiny(cfg):
    n_layer = min(cfg.n_layer, 5 if cfg.moe_layers and min(cfg.moe_layers, default=0) >= 3 else 4)
    kv = min(cfg.n_kv_head, 2)
    change = dict(n_layer=n_layer, n_embd=64, n_kv_head=kv, n_head=kv * min(cfg.n_head // cfg.n_kv_head, 2),
                  intermediate_size=48, vocab_size=300, max_seq_len=min(cfg.max_seq_len, 128),
                  embed_dim=32 if cfg.embed_dim else None,
                  # special tokens must lie in the shrunk vocabulary (ModelConfig checks them)
                  bos_token_id=None, pad_token_id=None, eos_token_id=(2,))
    if cfg.attention == "mla":
        change |= dict(kv_lora_rank=16, q_lora_rank=16 if cfg.q_lora_rank else None, qk_nope_head_dim=8,
                       qk_rope_head_dim=4, v_head_dim=8)
    elif cfg.rope_scaling.kind != "longrope":  # longrope's factor lists fix the rotary width
        change["head_dim"] = 16
    if cfg.n_experts:
        E = min(cfg.n_experts, 4)
        groups = min(cfg.router_groups, 2)
        change |= dict(n_experts=E, n_experts_per_tok=min(cfg.n_experts_per_tok, 2), moe_intermediate_size=24,
                       router_groups=groups, router_topk_groups=min(cfg.router_topk_groups, groups),
                       shared_expert_size=24 if cfg.shared_expert_size else 0)
    for k in LAYER_TUPLES:
        if getattr(cfg, k) is not None:
            change[k] = tuple(i for i in getattr(cfg, k) if i < n_layer)
    if cfg.sliding_window:
        change["sliding_window"] = min(cfg.sliding_window, 8)
    if cfg.attention_chunk:
        change["attention_chunk"] = min(cfg.attention_chunk, 8)
    if cfg.prefix_lm:
        change |= dict(bos_token_id=5, mask_token_ids=(6, 7)[: len(cfg.mask_token_ids)])
    if cfg.logn_attn_base:
        change["logn_attn_base"] = 16
    return cfg.replace(**change)


def _runnable():
    seen, out = set(), []
    for e in C.ENTRIES.values():
        key = repr(sorted(e.arch.items()))
        if key not in seen and not C.unsupported_features(e):
            seen.add(key)
            out.append(e)
    return out


@pytest.mark.parametrize("e", _runnable(), ids=lambda e: e.name)
@torch.no_grad()
def test_every_catalog_architecture_runs_tiny(e):
    cfg = tiny(C.to_model_config(e))
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    for p in m.parameters():  # random init leaves norms at 1 and biases at 0; perturb everything
        p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(10, 300, (2, 20))
    if cfg.prefix_lm:  # GLM inputs carry [gMASK] <sop>
        ids[:, 11], ids[:, 12] = cfg.mask_token_ids[0] if cfg.mask_token_ids else 10, cfg.bos_token_id
    full = m(ids)
    assert full.shape == (2, 20, 300) and torch.isfinite(full).all()
    cache = lmzoo.KVCache(m, 2, 20)
    steps = [m(ids[:, :18], cache=cache), m(ids[:, 18:19], cache=cache), m(ids[:, 19:20], cache=cache)]
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
