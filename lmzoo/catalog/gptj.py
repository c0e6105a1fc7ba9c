"""EleutherAI's GPT-J-6B: one LayerNorm feeding parallel attention and MLP, RoPE on the first 64 dims
of each 256-dim head, no attention biases, a biased (untied) LM head."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

GPTJ_6B = gpt_like(n_layer=28, n_embd=4096, n_head=16, vocab_size=50400, max_seq_len=2048, mlp="gelu_tanh",
                   position="rope", rope_theta=10000.0, rotary_percentage=64 / 256, qkv_bias=False,
                   attn_out_bias=False, parallel_residual=True, shared_norm=True, lm_head_bias=True,
                   tie_embeddings=False)

ENTRIES = [
    Entry(name="GPT-J-6B", family="gpt-j", organisation="EleutherAI", released="2021-06-09",
          params=6_053_381_344, params_label="6B", tokens=402e9,
          tokenizer="byte-level BPE (GPT-2), 50,257 tokens; embedding padded to 50,400",
          license=License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                          url=hf("EleutherAI/gpt-j-6b")),
          arch=GPTJ_6B, hf_id="EleutherAI/gpt-j-6b",
          sources={"paper": "https://github.com/kingoflolz/mesh-transformer-jax", "params": hf("EleutherAI/gpt-j-6b"),
                   "tokens": hf("EleutherAI/gpt-j-6b"), "arch": hf_config("EleutherAI/gpt-j-6b"),
                   "license": hf("EleutherAI/gpt-j-6b")},
          notes=("trained on the Pile for 402B tokens (383,500 steps)",)),
]
