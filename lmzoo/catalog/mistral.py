"""Mistral AI: Mistral-7B (GQA + sliding-window attention) and Mixtral-8x7B (sparse MoE, 8 experts top-2)."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, hf_config

M7_PAPER = "https://arxiv.org/abs/2310.06825"
M7_BLOG = "https://mistral.ai/news/announcing-mistral-7b/"
MIXTRAL_PAPER = "https://arxiv.org/abs/2401.04088"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://www.apache.org/licenses/LICENSE-2.0")

MISTRAL_7B = llama_like(n_layer=32, n_embd=4096, n_head=32, n_kv_head=8, intermediate_size=14336, vocab_size=32000,
                        max_seq_len=8192, norm_eps=1e-5, sliding_window=4096)
MIXTRAL_8X7B = llama_like(n_layer=32, n_embd=4096, n_head=32, n_kv_head=8, intermediate_size=14336,
                          vocab_size=32000, max_seq_len=32768, norm_eps=1e-5, rope_theta=1e6, n_experts=8,
                          n_experts_per_tok=2, moe_intermediate_size=14336, moe_renormalize=True, router="softmax")

ENTRIES = [
    Entry(name="Mistral-7B", family="mistral", organisation="Mistral AI", released="2023-09-27", params=7.3e9,
          params_label="7.3B", tokens=None, tokenizer="SentencePiece BPE, 32,000 tokens (byte fallback)",
          license=APACHE, arch=MISTRAL_7B, hf_id="mistralai/Mistral-7B-v0.1",
          sources={"paper": M7_PAPER, "params": M7_BLOG, "arch": M7_PAPER + " (Table 1)", "license": M7_BLOG},
          notes=("training tokens not disclosed",
                 "sliding window 4096 on every layer; trained context 8192 (the HF config declares 32768)",
                 "seed 003 gives Mistral sizes 7B-65B and an 8x7B MoE: 8x7B is Mixtral; there is no 65B"),
          aliases=("Mistral-7B-v0.1",)),
    Entry(name="Mixtral-8x7B", family="mistral", organisation="Mistral AI", released="2023-12-11", params=47e9,
          params_label="47B", active_params=13e9, tokens=None,
          tokenizer="SentencePiece BPE, 32,000 tokens (byte fallback)", license=APACHE, arch=MIXTRAL_8X7B,
          hf_id="mistralai/Mixtral-8x7B-v0.1",
          sources={"paper": MIXTRAL_PAPER, "params": MIXTRAL_PAPER, "arch": hf_config("mistralai/Mixtral-8x7B-v0.1"),
                   "license": MIXTRAL_PAPER},
          notes=("training tokens not disclosed", "every layer: 8 SwiGLU experts, 2 chosen per token"),
          aliases=("Mixtral-8x7B-v0.1",)),
]
