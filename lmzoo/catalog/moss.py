"""Fudan's MOSS (moss-moon-003): CodeGen-16B's GPT-J-style block (parallel attention + MLP on one
LayerNorm, partial RoPE, biased head) with a vocabulary grown for Chinese."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

README = "https://github.com/OpenLMLab/MOSS"
MOSS_16B = gpt_like(n_layer=34, n_embd=6144, n_head=24, vocab_size=107008, max_seq_len=2048, mlp="gelu_tanh",
                    position="rope", rope_theta=10000.0, rotary_percentage=64 / 256, qkv_bias=False,
                    attn_out_bias=False, parallel_residual=True, shared_norm=True, lm_head_bias=True,
                    tie_embeddings=False)

ENTRIES = [
    Entry(name="MOSS-moon-003-base", family="moss", organisation="Fudan University (OpenLMLab)",
          released="2023-04-21", params=16e9, params_label="16B", tokens=700e9,
          tokenizer="byte-level BPE (CodeGen) + Chinese tokens, 107,008 entries", objective="causal LM",
          license=License(name="AGPL-3.0 (weights) / CC BY-NC 4.0 (data)", commercial="conditional",
                          conditions="commercial use after filling in the authorisation questionnaire; AGPL "
                                     "copyleft on the weights", url=README + "/blob/main/MODEL_LICENSE"),
          base_model=None, arch=MOSS_16B, hf_id="fnlp/moss-moon-003-base",
          sources={"paper": README, "params": README, "tokens": README, "arch": hf_config("fnlp/moss-moon-003-base"),
                   "license": README + "/blob/main/MODEL_LICENSE", "card": hf("fnlp/moss-moon-003-base")},
          notes=("initialised from CodeGen-16B-mono; ~700B tokens in all (CodeGen's plus 100B Chinese)",),
          param_exception="rounded '16B' name; the grown 107,008-token embedding and untied head add 1.3B to "
                          "15.4B of blocks (16.7B)",
          aliases=("MOSS", "moss-moon-003-sft", "MOSS-16B")),
]
