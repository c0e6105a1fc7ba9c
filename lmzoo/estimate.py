"""Parameter counts of a configuration, total and active (MoE), by component.

Counted on a meta-device instance of the model itself (no memory is allocated), so the numbers are
exactly what `from_pretrained` would load. Components:
    embeddings  token (and learned position) tables, embedding norm, projections in/out
    attention   q/k/v/o projections, q/k norms, MLA's low-rank projections
    mlp         dense MLPs; MoE routers, routed experts and shared experts
    norms       per-block and final norms
    head        the LM head (0 when tied to the embedding)
"active" counts the parameters one token uses: in MoE layers only n_experts_per_tok routed experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from lmzoo.config import ModelConfig


@dataclass
class ParamCount:
    total: int
    active: int
    breakdown: dict[str, int] = field(default_factory=dict)


def _component(name: str) -> str:
    if name.startswith(("embed", "pos_embed", "project_")):
        return "embeddings"
    if name.startswith("lm_head"):
        return "head"
    if name.startswith("norm"):
        return "norms"
    if ".attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "norms"


def count_params(cfg: ModelConfig) -> ParamCount:
    from lmzoo.nn.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    breakdown: dict[str, int] = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    seen: set[int] = set()
    inactive = 0
    for name, p in model.named_parameters():  # tied parameters appear once
        if id(p) in seen:
            continue
        seen.add(id(p))
        breakdown[_component(name)] += p.numel()
    for layer in model.layers:
        experts = getattr(layer.mlp, "experts", None)
        if experts is not None:
            per_expert = sum(p.numel() for p in experts[0].parameters())
            inactive += (len(experts) - cfg.n_experts_per_tok) * per_expert
    total = sum(breakdown.values())
    return ParamCount(total=total, active=total - inactive, breakdown=breakdown)
