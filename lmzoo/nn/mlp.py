"""Feed-forward blocks, chosen by `ModelConfig.mlp`.

gated (swiglu, geglu; Shazeer 2020 "GLU Variants Improve Transformer"):
    down( act(x W_gate) * (x W_up) )      W_gate and W_up are stored fused as `gate_up` (2I, d)
plain (gelu, gelu_tanh, relu; GPT-NeoX / GPT-2 / OPT):
    down( act(x W_up) )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.config import ModelConfig

ACTIVATIONS = {
    "swiglu": F.silu,
    "geglu": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, *, width: int | None = None) -> None:
        """width: hidden width; default cfg.intermediate_size (MoE experts pass their own)."""
        super().__init__()
        self.gated = cfg.gated_mlp
        self.act = ACTIVATIONS[cfg.mlp]
        hidden = width or cfg.intermediate_size
        self.gate_up = nn.Linear(cfg.n_embd, hidden * (2 if self.gated else 1), bias=cfg.mlp_bias)
        self.down = nn.Linear(hidden, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gate_up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down(h)
