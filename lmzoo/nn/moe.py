"""Sparse mixture-of-experts feed-forward (Shazeer et al. 2017; Mixtral, Jiang et al. 2024).

    router:  p = softmax(x W_r)                      (tokens, n_experts), in float32
    top-k:   keep the k largest p per token; renormalise them to sum to 1 (Mixtral) or not (Qwen-MoE)
    output:  sum_j p_j * expert_j(x)                 each expert is a gated MLP of width moe_intermediate
    shared:  + sigmoid(x w_s) * shared_expert(x)     (Qwen2-MoE), when configured

Experts run one after another on the tokens routed to them (the eager form: exact, and on CPU the
tokens of one decode step touch only k experts' weights).
"""

from __future__ import annotations

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.mlp import MLP


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.k, self.renormalize = cfg.n_experts_per_tok, cfg.moe_renormalize
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, width=cfg.moe_intermediate_size) for _ in range(cfg.n_experts))
        if cfg.shared_expert_size:
            self.shared = MLP(cfg, width=cfg.shared_expert_size)
            self.shared_gate = nn.Linear(cfg.n_embd, 1, bias=False)
        else:
            self.shared = self.shared_gate = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        probs = self.router(x).float().softmax(-1)  # (N, E)
        weights, chosen = probs.topk(self.k, dim=-1)  # (N, k)
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            token, slot = (chosen == e).nonzero(as_tuple=True)
            y = self.experts[e](x[token]) * weights[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        if self.shared is not None:
            out = out + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        return out.view(shape)
