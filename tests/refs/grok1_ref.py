"""An independent reference for Grok-1, written from xai-org/grok-1's JAX model.py (the code the weights
were released with), operating on the tensor names of that repository's pytorch/ port:

  * embeddings x embedding_multiplier_scale; head tied to the embeddings, logits x output_multiplier_scale
  * DecoderLayer: h += norm2(attn(norm1(h)));  h += norm4(moe(norm3(h)))   (RMSNorm "scale" weights,
    computed in float32)
  * attention: rotate-half RoPE on the whole head, GQA, logits = (q.k) * attn_output_multiplier in
    float32, then 30 * tanh(logits / 30), causal mask, softmax
  * MoE (MoELayer._inference_call): routing_probs = softmax(x W_router) over all experts in float32,
    top-k of those probabilities *without renormalising*; each expert gelu(x w1) * (x v) -> dense with
    jax.nn.gelu's default tanh approximation; outputs weighted by the gates and summed

Plain torch, full recomputation, no cache — nothing shared with lmzoo."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def forward(state: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor) -> torch.Tensor:
    d, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, E, k_top = d // H, cfg["rms_norm_eps"], cfg["num_local_experts"], cfg["num_experts_per_tok"]
    B, T = ids.shape

    def rms(x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))

    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    phase = torch.outer(torch.arange(T).float(), inv)
    phase = torch.cat([phase, phase], -1)[None, :, None]  # (1, T, 1, hd)

    def rope(x):  # (B, T, heads, hd)
        x1, x2 = x.chunk(2, -1)
        return x * phase.cos() + torch.cat([-x2, x1], -1) * phase.sin()

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    x = state["embedding.weight"][ids] * cfg["embedding_multiplier_scale"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        h = rms(x, state[p + "norm1.weight"])
        q = rope((h @ state[p + "attention.q_proj.weight"].T).view(B, T, H, hd)).view(B, T, KV, H // KV, hd)
        k = rope((h @ state[p + "attention.k_proj.weight"].T).view(B, T, KV, hd))
        v = (h @ state[p + "attention.v_proj.weight"].T).view(B, T, KV, hd)
        logits = torch.einsum("bthgd,bshd->bhgts", q, k).float() * cfg["attn_output_multiplier"]
        logits = 30.0 * torch.tanh(logits / 30.0)
        logits = torch.where(causal, logits, torch.tensor(-1e30))
        w = logits.softmax(-1)
        a = torch.einsum("bhgts,bshd->bthgd", w, v).reshape(B, T, d)
        x = x + rms(a @ state[p + "attention.out_proj.weight"].T, state[p + "norm2.weight"])
        h = rms(x, state[p + "norm3.weight"])
        probs = (h.float() @ state[p + "mlp.gating.router_weights.weight"].T.float()).softmax(-1)  # (B, T, E)
        gate, idx = probs.topk(k_top, dim=-1)
        out = torch.zeros_like(h)
        for e in range(E):
            ep = p + f"mlp.experts.{e}."
            y = F.gelu(h @ state[ep + "w1.weight"].T, approximate="tanh") * (h @ state[ep + "v.weight"].T)
            y = y @ state[ep + "dense.weight"].T
            weight = (gate * (idx == e)).sum(-1, keepdim=True)  # 0 where expert e is not picked
            out = out + weight * y
        x = x + rms(out, state[p + "norm4.weight"])
    x = rms(x, state["norm.weight"])
    return (x @ state["embedding.weight"].T) * cfg["output_multiplier_scale"]


def greedy(state, cfg, ids: torch.Tensor, n: int) -> torch.Tensor:
    out = ids
    for _ in range(n):
        nxt = forward(state, cfg, out)[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
    return out[:, ids.shape[1]:]
