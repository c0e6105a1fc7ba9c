"""Baichuan Intelligence: Baichuan-7B (LLaMA block), Baichuan-13B (ALiBi), Baichuan 2 7B / 13B
(125,696-token vocabulary; NormHead, which has the same shapes as a plain head)."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, hf_config

B13_README = "https://github.com/baichuan-inc/Baichuan-13B"
B2_PAPER = "https://arxiv.org/abs/2309.10305"

B7_LICENSE = License(name="Baichuan-7B Model License", commercial="conditional",
                     conditions="commercial use permitted under the license's terms and use restrictions",
                     url="https://huggingface.co/baichuan-inc/Baichuan-7B/blob/main/LICENSE")
B13_LICENSE = License(name="Baichuan-13B Model License", commercial="conditional",
                      conditions="free for research; free commercial use after applying by email for a license",
                      url="https://github.com/baichuan-inc/Baichuan-13B/blob/main/MODEL_LICENSE.pdf")
B2_LICENSE = License(name="Baichuan 2 Community License", commercial="conditional",
                     conditions="free commercial use after email application if daily active users < 1M and the "
                                "licensee is not a software or cloud service provider",
                     url="https://huggingface.co/baichuan-inc/Baichuan2-7B-Base/blob/main/Community%20License%20for%20Baichuan%202%20Model.pdf")

BAICHUAN_7B = llama_like(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008, vocab_size=64000,
                         max_seq_len=4096, norm_eps=1e-6)
BAICHUAN_13B = llama_like(n_layer=40, n_embd=5120, n_head=40, intermediate_size=13696, vocab_size=64000,
                          max_seq_len=4096, norm_eps=1e-6, position="alibi")
BAICHUAN2_7B = dict(BAICHUAN_7B, vocab_size=125696)
BAICHUAN2_13B = dict(BAICHUAN_13B, vocab_size=125696)

ENTRIES = [
    Entry(name="Baichuan-7B", family="baichuan", organisation="Baichuan Intelligence", released="2023-06-15",
          params=7_000_559_616, params_label="7B", tokens=1.2e12,
          tokenizer="SentencePiece BPE, 64,000 tokens", license=B7_LICENSE, arch=BAICHUAN_7B,
          hf_id="baichuan-inc/Baichuan-7B",
          sources={"paper": "https://github.com/baichuan-inc/Baichuan-7B", "params": B13_README,
                   "tokens": "https://github.com/baichuan-inc/Baichuan-7B", "arch": hf_config("baichuan-inc/Baichuan-7B"),
                   "license": B7_LICENSE.url},
          notes=("seed 000 says 1.4T tokens and a 2048 context in one place; the model card: 1.2T tokens, 4096",)),
    Entry(name="Baichuan-13B", family="baichuan", organisation="Baichuan Intelligence", released="2023-07-11",
          params=13_264_901_120, params_label="13B", tokens=1.4e12,
          tokenizer="SentencePiece BPE, 64,000 tokens", license=B13_LICENSE, arch=BAICHUAN_13B,
          hf_id="baichuan-inc/Baichuan-13B-Base",
          sources={"paper": B13_README, "params": B13_README, "tokens": B13_README,
                   "arch": hf_config("baichuan-inc/Baichuan-13B-Base"), "license": B13_LICENSE.url}),
    Entry(name="Baichuan2-7B", family="baichuan", organisation="Baichuan Intelligence", released="2023-09-06",
          params=7e9, params_label="7B", tokens=2.6e12, tokenizer="SentencePiece BPE, 125,696 tokens",
          license=B2_LICENSE, arch=BAICHUAN2_7B, hf_id="baichuan-inc/Baichuan2-7B-Base",
          sources={"paper": B2_PAPER, "params": B2_PAPER, "tokens": B2_PAPER,
                   "arch": hf_config("baichuan-inc/Baichuan2-7B-Base"), "license": B2_LICENSE.url},
          param_exception="the '7B' label leaves out the 125,696-token vocabulary: embedding + head add 1.03B "
                          "to LLaMA-7B-shaped blocks (7.51B)",
          aliases=("Baichuan2-7B-Base",)),
    Entry(name="Baichuan2-13B", family="baichuan", organisation="Baichuan Intelligence", released="2023-09-06",
          params=13e9, params_label="13B", tokens=2.6e12, tokenizer="SentencePiece BPE, 125,696 tokens",
          license=B2_LICENSE, arch=BAICHUAN2_13B, hf_id="baichuan-inc/Baichuan2-13B-Base",
          sources={"paper": B2_PAPER, "params": B2_PAPER, "tokens": B2_PAPER,
                   "arch": hf_config("baichuan-inc/Baichuan2-13B-Base"), "license": B2_LICENSE.url},
          param_exception="the '13B' label leaves out the 125,696-token vocabulary (embedding + head 1.29B; "
                          "13.90B in all)",
          aliases=("Baichuan2-13B-Base",)),
]
