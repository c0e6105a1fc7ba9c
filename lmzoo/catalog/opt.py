"""Meta's OPT (125M - 175B): GPT-style pre-LN blocks with ReLU MLPs, learned positions (offset by 2),
tied head. OPT-350m alone is post-LN with a 512-wide embedding projected in and out."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf_config

PAPER = "https://arxiv.org/abs/2205.01068"
LICENSE = License(name="OPT-175B License Agreement", commercial="no",
                  conditions="non-commercial research use only (all sizes); 175B weights on application",
                  url="https://github.com/facebookresearch/metaseq/blob/main/projects/OPT/MODEL_LICENSE.md")


def _opt(n_layer, d, n_head, **more):
    return gpt_like(n_layer=n_layer, n_embd=d, n_head=n_head, vocab_size=50272, max_seq_len=2048, mlp="relu",
                    position="learned", position_offset=2, tie_embeddings=True, **more)


SIZES = {  # name: (layers, d_model, heads, published params)
    "125M": (12, 768, 12, 125e6), "350M": (24, 1024, 16, 350e6), "1.3B": (24, 2048, 32, 1.3e9),
    "2.7B": (32, 2560, 32, 2.7e9), "6.7B": (32, 4096, 32, 6.7e9), "13B": (40, 5120, 40, 13e9),
    "30B": (48, 7168, 56, 30e9), "66B": (64, 9216, 72, 66e9), "175B": (96, 12288, 96, 175e9),
}
ARCH = {s: _opt(L, d, h) for s, (L, d, h, _) in SIZES.items()}
ARCH["350M"] = _opt(24, 1024, 16, norm_placement="post", final_norm=False, embed_dim=512)

ENTRIES = [
    Entry(name=f"OPT-{s}", family="opt", organisation="Meta AI", released="2022-05-03", params=p, params_label=s,
          tokens=180e9, tokenizer="byte-level BPE (GPT-2), 50,272 entries", license=LICENSE, arch=ARCH[s],
          hf_id=None if s == "175B" else f"facebook/opt-{s.lower()}",
          sources={"paper": PAPER, "params": PAPER + " (Table 1)", "tokens": PAPER,
                   "arch": PAPER + " (Table 1)" if s == "175B" else hf_config(f"facebook/opt-{s.lower()}"),
                   "license": LICENSE.url},
          notes=(("post-LN, 512-wide word embeddings projected to 1024 and back",) if s == "350M" else ())
          + ("seed 002 calls OPT 'open source and free'; the weights are for non-commercial research only",),
          param_exception=("the paper's '350M' is nominal: a 512-wide embedding (25.7M) keeps the count at 331M"
                           if s == "350M" else None))
    for s, (_, _, _, p) in SIZES.items()
]
