"""Cerebras-GPT (111M - 13B): GPT-2 architecture (learned positions, pre-LN, GELU, tied head) trained
compute-optimally (about 20 tokens per parameter, Chinchilla)."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf_config

PAPER = "https://arxiv.org/abs/2304.03208"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://huggingface.co/cerebras/Cerebras-GPT-13B")

SIZES = {  # name: (layers, d_model, heads, published params, training tokens)
    "111M": (10, 768, 12, 111e6, 2.2e9), "256M": (14, 1088, 17, 256e6, 5.1e9), "590M": (18, 1536, 12, 590e6, 11.8e9),
    "1.3B": (24, 2048, 16, 1.3e9, 26.3e9), "2.7B": (32, 2560, 32, 2.7e9, 53.0e9), "6.7B": (32, 4096, 32, 6.7e9, 133e9),
    "13B": (40, 5120, 40, 13e9, 257e9),
}

ENTRIES = [
    Entry(name=f"Cerebras-GPT-{s}", family="cerebras", organisation="Cerebras Systems", released="2023-03-28",
          params=p, params_label=s, tokens=t, tokenizer="byte-level BPE (GPT-2), 50,257 tokens", license=APACHE,
          arch=gpt_like(n_layer=L, n_embd=d, n_head=h, vocab_size=50257, max_seq_len=2048, mlp="gelu"),
          hf_id=f"cerebras/Cerebras-GPT-{s}",
          sources={"paper": PAPER, "params": PAPER + " (Table 2)", "tokens": PAPER + " (Table 2)",
                   "arch": hf_config(f"cerebras/Cerebras-GPT-{s}"), "license": APACHE.url},
          notes=("seed 002 says it is built for Cerebras hardware only; it is a plain GPT-2 network that runs "
                 "anywhere",) if s == "13B" else ())
    for s, (L, d, h, p, t) in SIZES.items()
]
