"""PCL / Huawei PanGu-alpha (2.6B, 13B, 200B): GPT-style pre-LN blocks with learned positions, plus a
"query layer" on top whose attention query is a learned position embedding (of the next position)."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License

PAPER = "https://arxiv.org/abs/2104.12369"
REPO = "https://openi.pcl.ac.cn/PCL-Platform.Intelligence/PanGu-Alpha"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant", url=REPO)

SIZES = {  # name: (layers incl. the query layer, d_model, heads, published params)
    "2.6B": (32, 2560, 32, 2.6e9), "13B": (40, 5120, 40, 13.1e9), "200B": (64, 16384, 128, 207.0e9),
}

ENTRIES = [
    Entry(name=f"PanGu-alpha-{s}", family="pangu", organisation="Peng Cheng Laboratory / Huawei",
          released="2021-04-26", params=p, params_label=s, tokens=None,
          tokenizer="SentencePiece BPE (jieba-segmented Chinese), 40,000 tokens", license=APACHE,
          arch=gpt_like(n_layer=L, n_embd=d, n_head=h, vocab_size=40000, max_seq_len=1024, mlp="gelu",
                        query_layer=True),
          hf_id=None, sources={"paper": PAPER, "params": PAPER + " (Table 1)", "arch": PAPER + " (Table 1)",
                               "license": REPO},
          notes=("pre-trained on a 1.1TB Chinese corpus; seed 004 says 250B tokens, not confirmed from the paper "
                 "here",),
          aliases=(f"PanGu-α-{s}", f"Pangu-alpha-{s}"),
          param_exception=("the paper's table gives 13.1B, but its own hyperparameters (40 layers, width 5120, "
                           "40,000 tokens, 1024 positions) add up to 12.8B; the 2.6B and 200B rows agree with "
                           "their counts, so the 13B row's published figure is taken as stated") if s == "13B" else None)
    for s, (L, d, h, p) in SIZES.items()
]
