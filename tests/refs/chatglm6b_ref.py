"""An independent reference for ChatGLM-6B (v1), the GLM architecture proper. No transformers class
exists; this follows THUDM's published remote code (huggingface.co/THUDM/chatglm-6b,
modeling_chatglm.py, the 130528-token release) operation by operation, in its own layout
(sequence-first tensors, per-layer past key/values concatenated along the sequence):

  * word embeddings, no embedding norm, no absolute positions
  * GLMBlock:  h = LN_in(x);  x = alpha*h + attn(h);  h2 = LN_post(x);  out = alpha*h2 + mlp(h2),
    alpha = sqrt(2 * num_layers)  (DeepNorm-style scaled residual of the *normalised* input)
  * fused query_key_value viewed as (T, B, heads, 3 * head_dim): per head [q | k | v]
  * 2-D RoPE: each head split in two halves; the first rotated by position_ids, the second by
    block_position_ids, each half with rotate-half over its own 64 (here head_dim/2) dims. The cos/sin
    tables are computed in float16 (RotaryEmbedding(precision=torch.half): inv_freq.half(), t in half,
    cos/sin of the half angles) whatever the model dtype
  * attention: q / (sqrt(hd) * (layer_id + 1)), scores masked_fill(mask, -10000), then * (layer_id + 1)
    in float32, softmax
  * MLP: dense_h_to_4h -> OpenAI tanh-GELU -> dense_4h_to_h (plain GELU: the GEGLU class in the file
    is never used)
  * final LayerNorm, lm_head tied to the word embeddings (transformers ties them; the released
    checkpoint's lm_head.weight is the same matrix)
  * inputs: the tokenizer appends [gMASK] <sop>; context_length = index of <sop> (bos); the mask lets
    tokens before it see each other (prefix, bidirectional) and the rest is causal; position ids are
    arange for the context and the [gMASK]/[MASK] position for everything from <sop> on; block
    position ids are 0 for the context and 1, 2, 3, ... from <sop> on ([gMASK] preferred over [MASK])
  * decode with a cache: position = [mask_position, seq_len - context_length] for the new token,
    attention over all cached keys (mask all False, skipped)

Plain torch, nothing shared with lmzoo."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gelu_impl(x):
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def rope_tables(dim: int, seq_len: int):
    """cos/sin (seq_len, dim) as RotaryEmbedding(dim, precision=torch.half) builds them: half all the way."""
    inv_freq = (1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))).half()
    t = torch.arange(seq_len, dtype=inv_freq.dtype)
    freqs = torch.einsum("i,j->ij", t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin, pos):
    # pos: (T, B); q, k: (T, B, H, hd/2); cos: (L, hd/2) -> (T, B, 1, hd/2)
    c, s = F.embedding(pos, cos).unsqueeze(2), F.embedding(pos, sin).unsqueeze(2)
    c, s = c.to(q.dtype), s.to(q.dtype)
    return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s


def masks_and_positions(ids: list[int], cfg: dict):
    """get_masks + get_position_ids of the release for one unpadded sequence."""
    T = len(ids)
    ctx = ids.index(cfg["bos_token_id"])
    gmask, mask = cfg["gmask_token_id"], cfg["mask_token_id"]
    mask_position = ids.index(gmask if gmask in ids else mask)
    m = torch.ones(T, T).tril()
    m[:, :ctx] = 1
    attn_mask = (m < 0.5)[None, None]  # True = masked
    pos = torch.arange(T)
    pos[ctx:] = mask_position
    block = torch.cat([torch.zeros(ctx, dtype=torch.long), torch.arange(T - ctx) + 1])
    return attn_mask, torch.stack([pos, block])[None], ctx, mask_position  # (1, 2, T)


def forward(state: dict, cfg: dict, ids: torch.Tensor, position_ids, attn_mask, past=None):
    """One pass over ids (B, T); past: per-layer (k, v) of shape (S, B, H, hd). Returns logits (B, T, V)
    and the new past."""
    d, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_layers"]
    hd, eps = d // H, cfg["layernorm_epsilon"]
    alpha = (2 * L) ** 0.5
    x = state["transformer.word_embeddings.weight"][ids].transpose(0, 1)  # (T, B, d)
    T, B = x.shape[:2]
    cos, sin = rope_tables(hd // 2, int(position_ids.max()) + 1)
    pos, block = position_ids[:, 0].transpose(0, 1), position_ids[:, 1].transpose(0, 1)  # (T, B)
    presents = []
    for i in range(L):
        p = f"transformer.layers.{i}."

        def ln(t, name, p=p):
            return F.layer_norm(t, (d,), state[p + name + ".weight"], state[p + name + ".bias"], eps)

        h = ln(x, "input_layernorm")
        mixed = F.linear(h, state[p + "attention.query_key_value.weight"], state[p + "attention.query_key_value.bias"])
        mixed = mixed.view(T, B, H, 3 * hd)
        q, k, v = mixed.split(hd, dim=-1)
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        q1, k1 = apply_rotary(q1, k1, cos, sin, pos)
        q2, k2 = apply_rotary(q2, k2, cos, sin, block)
        q, k = torch.cat([q1, q2], -1), torch.cat([k1, k2], -1)
        if past is not None:
            k = torch.cat([past[i][0], k], dim=0)
            v = torch.cat([past[i][1], v], dim=0)
        presents.append((k, v))
        coeff = float(i + 1)
        q = q / (math.sqrt(hd) * coeff)
        scores = torch.einsum("qbhd,kbhd->bhqk", q, k)
        if not (attn_mask == 0).all():
            scores = scores.masked_fill(attn_mask, -10000.0)
        probs = F.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        ctx = torch.einsum("bhqk,kbhd->qbhd", probs, v).reshape(T, B, d)
        attn_out = F.linear(ctx, state[p + "attention.dense.weight"], state[p + "attention.dense.bias"])
        x = h * alpha + attn_out
        h2 = ln(x, "post_attention_layernorm")
        up = F.linear(h2, state[p + "mlp.dense_h_to_4h.weight"], state[p + "mlp.dense_h_to_4h.bias"])
        mlp_out = F.linear(gelu_impl(up), state[p + "mlp.dense_4h_to_h.weight"], state[p + "mlp.dense_4h_to_h.bias"])
        x = h2 * alpha + mlp_out
    x = F.layer_norm(x, (d,), state["transformer.final_layernorm.weight"],
                     state["transformer.final_layernorm.bias"], eps)
    logits = F.linear(x, state["transformer.word_embeddings.weight"]).transpose(0, 1)
    return logits, presents


def logits(state, cfg, ids: list[int]) -> torch.Tensor:
    """Full-sequence logits (1, T, V) for one prompt that contains [gMASK]/[MASK] and <sop>."""
    m, pos, _, _ = masks_and_positions(ids, cfg)
    return forward(state, cfg, torch.tensor([ids]), pos, m)[0]


def greedy(state, cfg, ids: list[int], n: int) -> list[int]:
    """Greedy decoding with the reference's own cache, as prepare_inputs_for_generation drives it."""
    m, pos, ctx, mask_position = masks_and_positions(ids, cfg)
    out, past = forward(state, cfg, torch.tensor([ids]), pos, m)
    seq = list(ids)
    new = []
    for _ in range(n):
        tok = int(out[0, -1].argmax())
        new.append(tok)
        seq.append(tok)
        step_pos = torch.tensor([[[mask_position], [len(seq) - ctx]]])  # (1, 2, 1)
        out, past = forward(state, cfg, torch.tensor([[tok]]), step_pos, torch.zeros(1, 1, 1, 1, dtype=torch.bool),
                            past)
    return new
