"""01.AI's Yi: Yi (6B, 34B), Yi-1.5 (6B, 9B, 34B), Yi-Coder (1.5B, 9B). LLaMA blocks with GQA and a
64,000-token SentencePiece vocabulary."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, derive, hf, hf_config

YI_PAPER = "https://arxiv.org/abs/2403.04652"
YI15 = "https://github.com/01-ai/Yi-1.5"
YI_CODER = "https://01-ai.github.io/blog.html?post=en/2024-09-05-A-Small-but-Mighty-LLM-for-Code.md"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://github.com/01-ai/Yi/blob/main/LICENSE")
TOKENIZER = "SentencePiece BPE, 64,000 tokens"

YI_6B = llama_like(n_layer=32, n_embd=4096, n_head=32, n_kv_head=4, intermediate_size=11008, vocab_size=64000,
                   max_seq_len=4096, norm_eps=1e-5, rope_theta=5e6)
YI_34B = llama_like(n_layer=60, n_embd=7168, n_head=56, n_kv_head=8, intermediate_size=20480, vocab_size=64000,
                    max_seq_len=4096, norm_eps=1e-5, rope_theta=5e6)
YI_9B = derive(YI_6B, n_layer=48)
YI_CODER_1B5 = llama_like(n_layer=24, n_embd=2048, n_head=16, n_kv_head=16, intermediate_size=5504,
                          vocab_size=64000, max_seq_len=131072, norm_eps=1e-5, rope_theta=1e7)


def _yi(name, arch, params, label, *, released, tokens, repo, paper, base=None, objective="causal LM", notes=()):
    return Entry(
        name=name, family="yi", organisation="01.AI", released=released, params=params, params_label=label,
        tokens=tokens, tokenizer=TOKENIZER, license=APACHE, base_model=base, objective=objective, arch=arch,
        hf_id=repo, sources={"paper": paper, "params": paper, "tokens": paper, "arch": hf_config(repo),
                             "license": APACHE.url, "card": hf(repo)},
        notes=tuple(notes),
    )


_YI_LICENSE_NOTE = ("released under the Yi Series Models Community License (commercial use after registration); "
                    "relicensed to Apache-2.0 in 2024",)

ENTRIES = [
    _yi("Yi-6B", YI_6B, 6e9, "6B", released="2023-11-02", tokens=3.1e12, repo="01-ai/Yi-6B", paper=YI_PAPER,
        notes=_YI_LICENSE_NOTE),
    _yi("Yi-34B", YI_34B, 34e9, "34B", released="2023-11-02", tokens=3.1e12, repo="01-ai/Yi-34B", paper=YI_PAPER,
        notes=_YI_LICENSE_NOTE + ("seed 000 compares it with 'LLaMA-2 34B', which Meta never released",)),
    _yi("Yi-1.5-6B", YI_6B, 6e9, "6B", released="2024-05-12", tokens=3.6e12, repo="01-ai/Yi-1.5-6B", paper=YI15,
        base="Yi-6B", objective="continued pre-training of Yi on 500B more tokens"),
    _yi("Yi-1.5-9B", YI_9B, 8.8e9, "9B", released="2024-05-12", tokens=3.6e12, repo="01-ai/Yi-1.5-9B", paper=YI15,
        objective="Yi-9B (depth-upscaled Yi-6B) continued on 500B more tokens"),
    _yi("Yi-1.5-34B", YI_34B, 34e9, "34B", released="2024-05-12", tokens=3.6e12, repo="01-ai/Yi-1.5-34B",
        paper=YI15, base="Yi-34B", objective="continued pre-training of Yi on 500B more tokens"),
    _yi("Yi-Coder-1.5B", YI_CODER_1B5, 1.5e9, "1.5B", released="2024-09-04", tokens=2.4e12,
        repo="01-ai/Yi-Coder-1.5B", paper=YI_CODER, objective="code pre-training (2.4T tokens, 52 languages)"),
    _yi("Yi-Coder-9B", derive(YI_9B, max_seq_len=131072, rope_theta=1e7), 8.8e9, "9B", released="2024-09-04",
        tokens=2.4e12, repo="01-ai/Yi-Coder-9B", paper=YI_CODER, base="Yi-1.5-9B",
        objective="continued code pre-training of Yi-9B (2.4T tokens, 52 languages)"),
]
