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
        self.cfg = cfg
        self.k, self.renormalize = cfg.n_experts_per_tok, cfg.moe_renormalize
        self.router = nn.Linear(cfg.n_embd, cfg.n_experts, bias=False)
        if cfg.router_bias:
            self.register_buffer("router_bias", torch.zeros(cfg.n_experts))
        self.experts = nn.ModuleList(MLP(cfg, width=cfg.moe_intermediate_size) for _ in range(cfg.n_experts))
        self.shared = MLP(cfg, width=cfg.shared_expert_size) if cfg.shared_expert_size else None
        gated = cfg.shared_expert_size and cfg.shared_expert_gate
        self.shared_gate = nn.Linear(cfg.n_embd, 1, bias=False) if gated else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, d) -> weights (N, k) float32, chosen expert ids (N, k)."""
        c = self.cfg
        logits = self.router(x).float()
        scores = logits.sigmoid() if c.router == "sigmoid" else logits.softmax(-1)  # (N, E)
        choice = scores + self.router_bias if c.router_bias else scores  # the bias only steers selection
        if c.router_groups > 1:  # group-limited routing (DeepSeek): experts of the best groups only
            g = choice.view(len(x), c.router_groups, -1)
            gscore = g.max(-1).values if c.router_group_score == "max" else g.topk(2, dim=-1).values.sum(-1)
            keep = torch.zeros_like(gscore).scatter_(1, gscore.topk(c.router_topk_groups, dim=-1).indices, 1.0)
            dropped = ~keep.bool().repeat_interleave(g.shape[-1], dim=1)
            if c.router == "sigmoid":  # V3: ineligible experts can never be chosen
                choice = choice.masked_fill(dropped, float("-inf"))
            else:  # V2: ineligible probabilities become 0 (and so does their weight)
                scores = choice = scores.masked_fill(dropped, 0.0)
        chosen = choice.topk(self.k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.renormalize:
            weights = weights / (weights.sum(-1, keepdim=True) + (1e-20 if c.router == "sigmoid" else 0.0))
        return weights * c.routed_scaling, chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        weights, chosen = self.route(x)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            token, slot = (chosen == e).nonzero(as_tuple=True)
            w = weights[token, slot, None].to(x.dtype)
            if self.cfg.moe_scale_input:  # Llama 4: the expert sees w * x
                y = self.experts[e](x[token] * w)
            else:
                y = self.experts[e](x[token]) * w
            out.index_add_(0, token, y)
        if self.shared is not None:
            s = self.shared(x)
            out = out + (s if self.shared_gate is None else torch.sigmoid(self.shared_gate(x)) * s)
        return out.view(shape)
