"""Transformer blocks: one small class per residual layout (ModelConfig.residual).

    pre        x = x + attn(attn_norm(x));  x = x + mlp(mlp_norm(x))                     LLaMA, GPT-2
    post       x = attn_norm(x + attn(x));  x = mlp_norm(x + mlp(x))                     OPT-350m
    deepnorm   h = attn_norm(x); x = alpha*h + attn(h); h = mlp_norm(x); x = alpha*h + mlp(h)   GLM
    sandwich   x = x + post_attn_norm(attn(attn_norm(x)));  likewise for the MLP          Grok-1
    parallel   x = x + attn(attn_norm(x)) + mlp(mlp_norm(x))  (one shared norm: GPT-J) GPT-NeoX, Falcon

Parameter names are the same in every layout (attn_norm, attn, mlp_norm, mlp [, post_*_norm]), so
checkpoint adapters need not know which one a model uses. `QueryLayer` is PanGu-alpha's top layer.
"""

from __future__ import annotations

from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.nn.attention import Attention, AttnInputs
from lmzoo.nn.mla import MLAttention
from lmzoo.nn.mlp import MLP
from lmzoo.nn.moe import MoE
from lmzoo.nn.norm import build_norm


class Block(nn.Module):
    """Shared parts: the two norms, attention (MHA/GQA or MLA) and the MLP (dense or MoE)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.attn = MLAttention(cfg, layer) if cfg.attention == "mla" else Attention(cfg, layer)
        self.mlp_norm = None if cfg.shared_norm else build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.layer_is_moe(layer) else MLP(cfg)
        # decode_step(block, x, a, mask) -> (B, 1, d) or None: the whole block's one-token step in one
        # kernel call, installed by a kernel transform (lmzoo.quant.gemv) on pre-norm blocks; None =
        # not applicable to this call, the modules run as usual
        self.decode_step = None

    def forward(self, x, a: AttnInputs, mask):
        raise NotImplementedError


class PreNormBlock(Block):
    def forward(self, x, a: AttnInputs, mask):
        if self.decode_step is not None and x.shape[1] == 1:
            y = self.decode_step(self, x, a, mask)
            if y is not None:
                return y
        x = x + self.attn(self.attn_norm(x), a, mask)
        return x + self.mlp(self.mlp_norm(x))


class PostNormBlock(Block):
    def forward(self, x, a: AttnInputs, mask):
        x = self.attn_norm(x + self.attn(x, a, mask))
        return self.mlp_norm(x + self.mlp(x))


class DeepNormBlock(Block):
    """The residual is the normalised input, scaled by alpha (GLM's GLMBlock; DeepNorm, arXiv 2203.00555)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.alpha = cfg.deepnorm_alpha

    def forward(self, x, a: AttnInputs, mask):
        h = self.attn_norm(x)
        x = h * self.alpha + self.attn(h, a, mask)
        h = self.mlp_norm(x)
        return h * self.alpha + self.mlp(h)


class SandwichBlock(Block):
    """Norms on the sublayer outputs too (Grok-1)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__(cfg, layer)
        self.post_attn_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)
        self.post_mlp_norm = build_norm(cfg.norm, cfg.n_embd, eps=cfg.norm_eps)

    def forward(self, x, a: AttnInputs, mask):
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), a, mask))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class ParallelBlock(Block):
    """Both branches read the same input (GPT-NeoX, GPT-J, Falcon); shared_norm: one norm for both."""

    def forward(self, x, a: AttnInputs, mask):
        h = self.attn_norm(x)
        return x + self.attn(h, a, mask) + self.mlp(h if self.mlp_norm is None else self.mlp_norm(x))


class QueryLayer(Block):
    """PanGu-alpha's top layer: queries come from a learned table of query positions, keys and values
    from the (final-normed) hidden state; otherwise a pre-norm block."""

    def forward(self, x, a: AttnInputs, mask, query=None):
        x = x + self.attn(self.attn_norm(x), a, mask, query_input=query)
        return x + self.mlp(self.mlp_norm(x))


BLOCKS: dict[str, type[Block]] = {"pre": PreNormBlock, "post": PostNormBlock, "deepnorm": DeepNormBlock,
                                  "sandwich": SandwichBlock, "parallel": ParallelBlock}


def build_block(cfg: ModelConfig, layer: int) -> Block:
    if cfg.query_layer and layer == cfg.n_layer - 1:
        return QueryLayer(cfg, layer)
    return BLOCKS[cfg.residual](cfg, layer)
