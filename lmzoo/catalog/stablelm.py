"""Stability AI's StableLM: the Alpha models (GPT-NeoX block), StableLM-3B-4E1T and StableLM 2 1.6B
(LLaMA-like sequential block with LayerNorm and partial RoPE)."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like, llama_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

ALPHA = "https://github.com/Stability-AI/StableLM"
CC_BY_SA = License(name="CC BY-SA 4.0", commercial="yes", conditions="attribution; share-alike for derivatives",
                   url="https://creativecommons.org/licenses/by-sa/4.0/")
COMMUNITY = License(name="Stability AI Community License", commercial="conditional",
                    conditions="free commercial use below $1M annual revenue; above that an enterprise license",
                    url="https://huggingface.co/stabilityai/stablelm-2-1_6b/blob/main/LICENSE.md")


def _alpha(n_layer, d, n_head):
    return gpt_like(n_layer=n_layer, n_embd=d, n_head=n_head, vocab_size=50688, max_seq_len=4096, mlp="gelu",
                    position="rope", rope_theta=10000.0, rotary_percentage=0.25, parallel_residual=True,
                    tie_embeddings=False)


def _lnrope(**kw):
    return llama_like(norm="layernorm", rotary_percentage=0.25, norm_eps=1e-5, **kw)


STABLELM_ALPHA_3B = _alpha(16, 4096, 32)
STABLELM_ALPHA_7B = _alpha(16, 6144, 48)
STABLELM_3B_4E1T = _lnrope(n_layer=32, n_embd=2560, n_head=32, intermediate_size=6912, vocab_size=50304,
                           max_seq_len=4096)
STABLELM2_1B6 = _lnrope(n_layer=24, n_embd=2048, n_head=32, intermediate_size=5632, vocab_size=100352,
                        max_seq_len=4096, qkv_bias=True)

_ALPHA_NOTES = ("seed 004 lists 3B/7B/15B/30B and 1.5T tokens: only 3B and 7B Alpha were released; 1.5T is the "
                "size of the dataset, the Alpha models saw 800B tokens of it",)
ENTRIES = [
    Entry(name="StableLM-Base-Alpha-3B", family="stablelm", organisation="Stability AI", released="2023-04-19",
          params=3e9, params_label="3B", tokens=800e9, tokenizer="byte-level BPE (GPT-NeoX), 50,688 entries",
          license=CC_BY_SA, arch=STABLELM_ALPHA_3B, hf_id="stabilityai/stablelm-base-alpha-3b",
          sources={"paper": ALPHA, "params": ALPHA, "tokens": ALPHA, "arch": hf_config("stabilityai/stablelm-base-alpha-3b"),
                   "license": ALPHA},
          notes=_ALPHA_NOTES, aliases=("StableLM-Alpha-3B", "StableLM-3B"),
          param_exception="the '3B' label is nominal: 16 blocks of width 4096 plus a 50,688-token embedding "
                          "and untied head hold 3.64B"),
    Entry(name="StableLM-Base-Alpha-7B", family="stablelm", organisation="Stability AI", released="2023-04-19",
          params=7e9, params_label="7B", tokens=800e9, tokenizer="byte-level BPE (GPT-NeoX), 50,688 entries",
          license=CC_BY_SA, arch=STABLELM_ALPHA_7B, hf_id="stabilityai/stablelm-base-alpha-7b",
          sources={"paper": ALPHA, "params": ALPHA, "tokens": ALPHA, "arch": hf_config("stabilityai/stablelm-base-alpha-7b"),
                   "license": ALPHA},
          notes=_ALPHA_NOTES, aliases=("StableLM-Alpha-7B", "StableLM-7B", "StableLM"),
          param_exception="the '7B' label is nominal: 16 blocks of width 6144 plus embedding and untied head "
                          "hold 7.87B"),
    Entry(name="StableLM-3B-4E1T", family="stablelm", organisation="Stability AI", released="2023-09-29",
          params=2_795_443_200, params_label="2.8B", tokens=4e12, tokenizer="byte-level BPE (GPT-NeoX), 50,304 entries",
          license=CC_BY_SA, arch=STABLELM_3B_4E1T, hf_id="stabilityai/stablelm-3b-4e1t",
          sources={"paper": hf("stabilityai/stablelm-3b-4e1t"), "params": hf("stabilityai/stablelm-3b-4e1t"),
                   "tokens": hf("stabilityai/stablelm-3b-4e1t"), "arch": hf_config("stabilityai/stablelm-3b-4e1t"),
                   "license": hf("stabilityai/stablelm-3b-4e1t")},
          notes=("4 epochs over 1T tokens",)),
    Entry(name="StableLM-2-1.6B", family="stablelm", organisation="Stability AI", released="2024-01-19",
          params=1_644_515_328, params_label="1.6B", tokens=2e12, tokenizer="tiktoken BPE (Arcade100k), 100,352 entries",
          license=COMMUNITY, arch=STABLELM2_1B6, hf_id="stabilityai/stablelm-2-1_6b",
          sources={"paper": "https://arxiv.org/abs/2402.17834", "params": hf("stabilityai/stablelm-2-1_6b"),
                   "tokens": "https://arxiv.org/abs/2402.17834", "arch": hf_config("stabilityai/stablelm-2-1_6b"),
                   "license": COMMUNITY.url},
          notes=("first released under the Stability AI membership (non-commercial) terms",)),
]
