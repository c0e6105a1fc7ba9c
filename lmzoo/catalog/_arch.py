"""Architecture dicts under `ModelConfig` field names, with every switch written out (so a row says
what its model *is*: norm, activation, position encoding, attention sharing, residual layout, ties,
biases), not just what differs from lmzoo's defaults."""

from __future__ import annotations

from typing import Any


def llama_like(*, n_layer: int, n_embd: int, n_head: int, intermediate_size: int, vocab_size: int,
               max_seq_len: int, n_kv_head: int | None = None, head_dim: int | None = None,
               norm_eps: float = 1e-6, rope_theta: float = 10000.0, tie_embeddings: bool = False,
               qkv_bias: bool = False, **more: Any) -> dict[str, Any]:
    """LLaMA's block: pre-RMSNorm, SwiGLU MLP without biases, RoPE on the whole head, untied head."""
    arch = dict(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head or n_head,
        head_dim=head_dim or n_embd // n_head, intermediate_size=intermediate_size, vocab_size=vocab_size,
        max_seq_len=max_seq_len, norm="rmsnorm", norm_eps=norm_eps, norm_placement="pre", mlp="swiglu",
        mlp_bias=False, qkv_bias=qkv_bias, attn_out_bias=False, position="rope", rope_theta=rope_theta,
        rotary_percentage=1.0, attention="standard", parallel_residual=False, tie_embeddings=tie_embeddings,
    )
    arch.update(more)
    return arch


def gpt_like(*, n_layer: int, n_embd: int, n_head: int, vocab_size: int, max_seq_len: int,
             intermediate_size: int | None = None, mlp: str = "gelu", position: str = "learned",
             tie_embeddings: bool = True, norm_eps: float = 1e-5, **more: Any) -> dict[str, Any]:
    """GPT-2's block: pre-LayerNorm, two-layer MLP, biases everywhere, learned absolute positions,
    head tied to the token embedding."""
    arch = dict(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_head, head_dim=n_embd // n_head,
        intermediate_size=intermediate_size or 4 * n_embd, vocab_size=vocab_size, max_seq_len=max_seq_len,
        norm="layernorm", norm_eps=norm_eps, norm_placement="pre", mlp=mlp, mlp_bias=True, qkv_bias=True,
        attn_out_bias=True, position=position, attention="standard", parallel_residual=False,
        tie_embeddings=tie_embeddings,
    )
    arch.update(more)
    return arch


def layers(n: int, pred) -> tuple[int, ...]:
    """Layer indices 0..n-1 satisfying pred (for moe_layers, nope_layers, ...)."""
    return tuple(i for i in range(n) if pred(i))
