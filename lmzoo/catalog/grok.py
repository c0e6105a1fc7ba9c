"""xAI's Grok-1 (314B MoE, 8 experts top-2): GQA (48 query / 8 KV heads), RMSNorm before *and* after
each sublayer, GeGLU experts, soft-capped attention logits, tied embedding."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License

REPO = "https://github.com/xai-org/grok-1"
GROK_1 = llama_like(n_layer=64, n_embd=6144, n_head=48, n_kv_head=8, head_dim=128, intermediate_size=32768,
                    vocab_size=131072, max_seq_len=8192, norm_eps=1e-5, mlp="geglu", tie_embeddings=True,
                    n_experts=8, n_experts_per_tok=2, moe_intermediate_size=32768, router="softmax",
                    moe_renormalize=False, sandwich_norm=True, attn_logit_softcap=30.0,
                    # JAX model.py / run.py: attn_output_multiplier, embedding and output multipliers
                    attn_scale=0.08838834764831845, embed_scale=78.38367176906169, logit_scale=0.5773502691896257)

ENTRIES = [
    Entry(name="Grok-1", family="grok", organisation="xAI", released="2024-03-17", params=314e9, params_label="314B",
          active_params=None, tokens=None, tokenizer="SentencePiece, 131,072 tokens",
          license=License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                          url=REPO + "/blob/main/LICENSE.txt"),
          arch=GROK_1, hf_id="xai-org/grok-1",
          sources={"paper": "https://x.ai/blog/grok-os", "params": "https://x.ai/blog/grok-os",
                   "arch": REPO + "/blob/main/run.py",
                   "license": REPO + "/blob/main/LICENSE.txt"},
          notes=("training tokens not disclosed; the release blog says 25% of weights are active per token",
                 "FFN width: widening factor 8 -> int(8 * 6144 * 2 / 3) rounded to a multiple of 8 = 32768")),
]
