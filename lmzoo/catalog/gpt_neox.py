"""EleutherAI's GPT-NeoX-20B and Pythia, and the GPT-NeoX-architecture models built on them:
Databricks' Dolly 2.0, Together's RedPajama-INCITE. LayerNorm, GELU MLP with biases, partial RoPE
(25% of each head), parallel attention + MLP with two norms, untied head."""

from __future__ import annotations

from lmzoo.catalog._arch import gpt_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

NEOX_PAPER = "https://arxiv.org/abs/2204.06745"
PYTHIA_PAPER = "https://arxiv.org/abs/2304.01373"
DOLLY = "https://www.databricks.com/blog/2023/04/12/dolly-first-open-commercially-viable-instruction-tuned-llm"
REDPAJAMA = "https://www.together.ai/blog/redpajama-models-v1"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://www.apache.org/licenses/LICENSE-2.0")
MIT = License(name="MIT", commercial="yes", conditions="keep the copyright notice",
              url="https://huggingface.co/databricks/dolly-v2-12b")
TOKENIZER = "byte-level BPE (GPT-NeoX / Pile), 50,277 tokens; embedding padded"


def neox(n_layer, d, n_head, *, vocab, ctx=2048, rotary=0.25, parallel=True):
    return gpt_like(n_layer=n_layer, n_embd=d, n_head=n_head, vocab_size=vocab, max_seq_len=ctx, mlp="gelu",
                    position="rope", rope_theta=10000.0, rotary_percentage=rotary, parallel_residual=parallel,
                    tie_embeddings=False)


GPT_NEOX_20B = neox(44, 6144, 64, vocab=50432)
PYTHIA_12B = neox(36, 5120, 40, vocab=50688)
REDPAJAMA_3B = neox(32, 2560, 32, vocab=50432, rotary=1.0, parallel=False)
REDPAJAMA_7B = neox(32, 4096, 32, vocab=50432, rotary=1.0, parallel=False)

ENTRIES = [
    Entry(name="GPT-NeoX-20B", family="gpt-neox", organisation="EleutherAI", released="2022-02-09",
          params=20_554_567_680, params_label="20B", tokens=472e9, tokenizer=TOKENIZER, license=APACHE,
          arch=GPT_NEOX_20B, hf_id="EleutherAI/gpt-neox-20b",
          sources={"paper": NEOX_PAPER, "params": NEOX_PAPER + " (Table 1)", "tokens": NEOX_PAPER,
                   "arch": hf_config("EleutherAI/gpt-neox-20b"), "license": hf("EleutherAI/gpt-neox-20b")},
          notes=("tokens: 150,000 steps x ~3.15M tokens on the Pile",)),
    Entry(name="Pythia-12B", family="gpt-neox", organisation="EleutherAI", released="2023-02-13",
          params=11_846_072_320, params_label="12B", tokens=300e9, tokenizer=TOKENIZER, license=APACHE,
          arch=PYTHIA_12B, hf_id="EleutherAI/pythia-12b",
          sources={"paper": PYTHIA_PAPER, "params": PYTHIA_PAPER + " (Table 1)", "tokens": PYTHIA_PAPER,
                   "arch": hf_config("EleutherAI/pythia-12b"), "license": hf("EleutherAI/pythia-12b")}),
    Entry(name="Dolly-v2-12B", family="gpt-neox", organisation="Databricks", released="2023-04-12",
          params=12e9, params_label="12B", tokens=None, tokenizer=TOKENIZER, license=MIT, base_model="Pythia-12B",
          objective="instruction SFT on databricks-dolly-15k (15K human-written examples, CC BY-SA 3.0)",
          arch=PYTHIA_12B, hf_id="databricks/dolly-v2-12b",
          sources={"paper": DOLLY, "params": hf("databricks/dolly-v2-12b"), "arch": hf_config("databricks/dolly-v2-12b"),
                   "license": MIT.url, "base_model": DOLLY},
          notes=("tokens: fine-tuning only; pre-training tokens are Pythia-12B's",),
          aliases=("Dolly-2.0", "Dolly-2.0-12B", "dolly-v2-12b")),
    Entry(name="RedPajama-INCITE-3B", family="gpt-neox", organisation="Together (with the INCITE partners)",
          released="2023-05-05", params=2.8e9, params_label="2.8B", tokens=800e9, tokenizer=TOKENIZER,
          license=APACHE, arch=REDPAJAMA_3B, hf_id="togethercomputer/RedPajama-INCITE-Base-3B-v1",
          sources={"paper": REDPAJAMA, "params": hf("togethercomputer/RedPajama-INCITE-Base-3B-v1"),
                   "tokens": REDPAJAMA, "arch": hf_config("togethercomputer/RedPajama-INCITE-Base-3B-v1"),
                   "license": hf("togethercomputer/RedPajama-INCITE-Base-3B-v1")},
          notes=("trained on the RedPajama-1T dataset",), aliases=("RedPajama-INCITE-Base-3B-v1",)),
    Entry(name="RedPajama-INCITE-7B", family="gpt-neox", organisation="Together (with the INCITE partners)",
          released="2023-06-06", params=6.9e9, params_label="6.9B", tokens=1.0e12, tokenizer=TOKENIZER,
          license=APACHE, arch=REDPAJAMA_7B, hf_id="togethercomputer/RedPajama-INCITE-7B-Base",
          sources={"paper": REDPAJAMA, "params": hf("togethercomputer/RedPajama-INCITE-7B-Base"),
                   "tokens": REDPAJAMA, "arch": hf_config("togethercomputer/RedPajama-INCITE-7B-Base"),
                   "license": hf("togethercomputer/RedPajama-INCITE-7B-Base")},
          notes=("seed 002 credits RedPajama with 'multi-task learning'; it is a plain causal LM on RedPajama-1T",),
          aliases=("RedPajama-INCITE-7B-Base",)),
]
