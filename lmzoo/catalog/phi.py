"""Microsoft's Phi-3 mini (3.8B) and medium (14B): LLaMA blocks (fused qkv / gate_up in the checkpoint),
trained on heavily filtered web data and synthetic data."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, hf_config

PAPER = "https://arxiv.org/abs/2404.14219"
MIT = License(name="MIT", commercial="yes", conditions="keep the copyright notice",
              url="https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/LICENSE")
TOKENIZER = "SentencePiece BPE (LLaMA's), 32,064 entries"

PHI3_MINI = llama_like(n_layer=32, n_embd=3072, n_head=32, intermediate_size=8192, vocab_size=32064,
                       max_seq_len=4096, norm_eps=1e-5)
PHI3_MEDIUM = llama_like(n_layer=40, n_embd=5120, n_head=40, n_kv_head=10, intermediate_size=17920,
                         vocab_size=32064, max_seq_len=4096, norm_eps=1e-5)

_NOTES = ("seed 003 says Phi-3 is a 175B model distilled to 3.8B; the paper trains it from scratch on filtered "
          "web and synthetic data",
          "the 128K variants use LongRoPE (per-frequency factors; not in this row); Phi-3-small (7B) uses "
          "block-sparse attention and a different tokenizer")
ENTRIES = [
    Entry(name="Phi-3-mini", family="phi", organisation="Microsoft", released="2024-04-23", params=3.8e9,
          params_label="3.8B", tokens=3.3e12, tokenizer=TOKENIZER, license=MIT, arch=PHI3_MINI,
          hf_id="microsoft/Phi-3-mini-4k-instruct", objective="causal LM, then SFT + DPO",
          sources={"paper": PAPER, "params": PAPER, "tokens": PAPER, "arch": hf_config("microsoft/Phi-3-mini-4k-instruct"),
                   "license": MIT.url},
          notes=_NOTES, aliases=("Phi-3-mini-4k-instruct", "Phi-3")),
    Entry(name="Phi-3-medium", family="phi", organisation="Microsoft", released="2024-05-21", params=14e9,
          params_label="14B", tokens=4.8e12, tokenizer=TOKENIZER, license=MIT, arch=PHI3_MEDIUM,
          hf_id="microsoft/Phi-3-medium-4k-instruct", objective="causal LM, then SFT + DPO",
          sources={"paper": PAPER, "params": PAPER, "tokens": PAPER,
                   "arch": hf_config("microsoft/Phi-3-medium-4k-instruct"), "license": MIT.url},
          notes=_NOTES, aliases=("Phi-3-medium-4k-instruct",)),
]
