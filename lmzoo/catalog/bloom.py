"""BigScience BLOOM and its multitask fine-tune BLOOMZ: embedding LayerNorm, pre-LN, GELU, ALiBi,
tied head, biases everywhere, a 250,880-token multilingual byte-level BPE."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

PAPER = "https://arxiv.org/abs/2211.05100"
BLOOMZ_PAPER = "https://arxiv.org/abs/2211.01786"
RAIL = License(name="BigScience BLOOM RAIL 1.0", commercial="yes",
               conditions="use-based restrictions (no illegal, harmful, medical-advice ... uses) that every "
                          "derivative must carry",
               url="https://huggingface.co/spaces/bigscience/license")
TOKENIZER = "byte-level BPE, 250,880 tokens (multilingual)"


def _arch(n_layer, n_embd, n_head):
    return gpt_like(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=250880, max_seq_len=2048,
                    mlp="gelu_tanh", position="alibi", embed_norm=True)


BLOOM_560M = _arch(24, 1024, 16)
BLOOM_1B1 = _arch(24, 1536, 16)
BLOOM_1B7 = _arch(24, 2048, 16)
BLOOM_3B = _arch(30, 2560, 32)
BLOOM_7B1 = _arch(30, 4096, 32)
BLOOM_176B = _arch(70, 14336, 112)


def _bloom(name, arch, params, label, repo, tokens):
    return Entry(
        name=name, family="bloom", organisation="BigScience", released="2022-07-12", params=params,
        params_label=label, tokens=tokens, tokenizer=TOKENIZER, license=RAIL, arch=arch, hf_id=repo,
        sources={"paper": PAPER, "params": hf(repo), "tokens": PAPER, "arch": hf_config(repo), "license": RAIL.url},
        aliases=(repo.split("/")[1],),
    )


def _bloomz(name, arch, params, label, repo, base):
    return Entry(
        name=name, family="bloom", organisation="BigScience", released="2022-11-03", params=params,
        params_label=label, tokens=None, tokenizer=TOKENIZER, license=RAIL, base_model=base, arch=arch, hf_id=repo,
        objective="multitask prompted fine-tuning (xP3 / xP3mt)",
        sources={"paper": BLOOMZ_PAPER, "params": hf(repo), "arch": hf_config(repo), "license": RAIL.url,
                 "base_model": BLOOMZ_PAPER},
        notes=("tokens: fine-tuning only; pre-training tokens are BLOOM's",),
    )


ENTRIES = [
    _bloom("BLOOM-560M", BLOOM_560M, 559_214_592, "560M", "bigscience/bloom-560m", 341e9),
    _bloom("BLOOM-1B1", BLOOM_1B1, 1_065_314_304, "1.1B", "bigscience/bloom-1b1", 341e9),
    _bloom("BLOOM-1B7", BLOOM_1B7, 1_722_408_960, "1.7B", "bigscience/bloom-1b7", 341e9),
    _bloom("BLOOM-3B", BLOOM_3B, 3_002_557_440, "3B", "bigscience/bloom-3b", 341e9),
    _bloom("BLOOM-7B1", BLOOM_7B1, 7_069_016_064, "7.1B", "bigscience/bloom-7b1", 341e9),
    _bloom("BLOOM-176B", BLOOM_176B, 176_247_271_424, "176B", "bigscience/bloom", 366e9),
    _bloomz("BLOOMZ-7B1-mt", BLOOM_7B1, 7_069_016_064, "7.1B", "bigscience/bloomz-7b1-mt", "BLOOM-7B1"),
    _bloomz("BLOOMZ-176B", BLOOM_176B, 176_247_271_424, "176B", "bigscience/bloomz", "BLOOM-176B"),
]
