"""Run by tests/train/test_distributed.py under `torchrun --nproc-per-node 2`: for three family shapes,
the logits of a tensor-parallel model against the same model unsharded (built from the same seed on
every rank), and the canonical weights read back from the shards. Rank 0 prints one JSON line."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from lmzoo.catalog import get_config
from lmzoo.nn.transformer import Transformer
from lmzoo.train.parallel import shutdown, tensor_parallel, tp_full_state_dict

SHAPES = {
    "llama": ("Llama-2-7B", dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)),
    "gpt_neox": ("Pythia-12B", dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, intermediate_size=128)),
    "bloom": ("BLOOM-560M", dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4, intermediate_size=128)),
}


def main() -> None:
    dist.init_process_group("gloo")
    out = {}
    for key, (name, changes) in SHAPES.items():
        cfg = get_config(name).replace(vocab_size=512, max_seq_len=64, head_dim=None, **changes)
        torch.manual_seed(0)
        model = Transformer(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():  # non-trivial biases and norms too
                p.add_(torch.randn_like(p) * 0.02)
        canonical = {k: v.clone() for k, v in model.state_dict().items()}
        ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
        want = model(ids)
        want.square().mean().backward()
        want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad(set_to_none=True)
        tensor_parallel(model)
        got = model(ids)
        got.square().mean().backward()  # trainable: gradients through the shards, in canonical layout
        grads = tp_full_state_dict(model, grads=True)
        with torch.no_grad():
            want, got = want.detach(), got.detach()
        back = tp_full_state_dict(model)
        out[key] = {"logits": float((got - want).abs().max()),
                    "grads": max(float((grads[n] - g).abs().max()) / max(float(g.abs().max()), 1e-12)
                                 for n, g in want_grads.items()),
                    "roundtrip": max(float((back[k] - canonical[k]).abs().max()) for k in canonical),
                    "heads": cfg.n_head, "local_heads": model.layers[0].attn.n_head,
                    "qkv_rows": [cfg.q_size + 2 * cfg.kv_size, model.layers[0].attn.qkv.weight.to_local().shape[0]]}
    if dist.get_rank() == 0:
        print(json.dumps(out))
    shutdown()  # a barrier, then leave the group


if __name__ == "__main__":
    main()
