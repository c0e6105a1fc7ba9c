"""Alibaba's Qwen: Qwen (first generation), Qwen1.5, Qwen2, Qwen2.5 and Qwen2.5-1M.

All LLaMA-like blocks with a bias on q/k/v only; the small models tie their head to the embedding
(Qwen2/2.5 0.5B-3B). Qwen1.5 used GQA only at 32B and 110B; Qwen2 and 2.5 everywhere."""

from __future__ import annotations

from lmzoo.catalog._arch import llama_like
from lmzoo.catalog._entry import Entry, License, derive, hf, hf_config

QWEN_PAPER = "https://arxiv.org/abs/2309.16609"
QWEN15_BLOG = "https://qwenlm.github.io/blog/qwen1.5/"
QWEN2_PAPER = "https://arxiv.org/abs/2407.10671"
QWEN25_PAPER = "https://arxiv.org/abs/2412.15115"
QWEN25_1M = "https://arxiv.org/abs/2501.15383"

TONGYI = License(name="Tongyi Qianwen License Agreement", commercial="conditional",
                 conditions="commercial use allowed; products with > 100M monthly active users need a license "
                            "from Alibaba Cloud", url="https://github.com/QwenLM/Qwen/blob/main/Tongyi%20Qianwen%20LICENSE%20AGREEMENT")
TONGYI_RESEARCH = License(name="Tongyi Qianwen Research License", commercial="no",
                          conditions="research and evaluation only; commercial use needs a separate license",
                          url="https://huggingface.co/Qwen/Qwen1.5-0.5B/blob/main/LICENSE")
QWEN_LICENSE = License(name="Qwen License Agreement", commercial="conditional",
                       conditions="commercial use allowed; > 100M monthly active users need a license from Alibaba Cloud",
                       url="https://huggingface.co/Qwen/Qwen2.5-72B/blob/main/LICENSE")
QWEN_RESEARCH = License(name="Qwen Research License Agreement", commercial="no",
                        conditions="non-commercial research only", url="https://huggingface.co/Qwen/Qwen2.5-3B/blob/main/LICENSE")
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://www.apache.org/licenses/LICENSE-2.0")
TOKENIZER = "tiktoken byte-level BPE, 151,643 tokens (+ specials; embedding padded)"


def _q(n_layer, n_embd, n_head, ffn, *, kv=None, vocab=151936, ctx=32768, theta=1e6, tie=False, **more):
    return llama_like(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=kv, intermediate_size=ffn,
                      vocab_size=vocab, max_seq_len=ctx, norm_eps=1e-6, rope_theta=theta, tie_embeddings=tie,
                      qkv_bias=True, **more)


QWEN_7B = _q(32, 4096, 32, 11008, ctx=8192, theta=10000.0)

Q15 = {
    "0.5B": _q(24, 1024, 16, 2816), "1.8B": _q(24, 2048, 16, 5504), "4B": _q(40, 2560, 20, 6912, theta=5e6),
    "7B": _q(32, 4096, 32, 11008), "14B": _q(40, 5120, 40, 13696, vocab=152064),
    "32B": _q(64, 5120, 40, 27392, kv=8, vocab=152064), "72B": _q(80, 8192, 64, 24576, vocab=152064),
    "110B": _q(80, 8192, 64, 49152, kv=8, vocab=152064),
}
Q15_MOE = _q(24, 2048, 16, 5632, n_experts=60, n_experts_per_tok=4, moe_intermediate_size=1408,
             shared_expert_size=5632, shared_expert_gate=True, moe_renormalize=False, router="softmax")

_YARN128K = dict(kind="yarn", factor=4.0, original_max_position=32768)
Q2 = {
    "0.5B": _q(24, 896, 14, 4864, kv=2, tie=True), "1.5B": _q(28, 1536, 12, 8960, kv=2, tie=True),
    "7B": _q(28, 3584, 28, 18944, kv=4, vocab=152064, ctx=131072, rope_scaling=_YARN128K),
    "72B": _q(80, 8192, 64, 29568, kv=8, vocab=152064, ctx=131072, rope_scaling=_YARN128K),
}
Q2_MOE = _q(28, 3584, 28, 18944, kv=4, ctx=65536, n_experts=64, n_experts_per_tok=8, moe_intermediate_size=2560,
            shared_expert_size=20480, shared_expert_gate=True, moe_renormalize=False, router="softmax")
Q25 = {
    "0.5B": Q2["0.5B"], "1.5B": Q2["1.5B"], "3B": _q(36, 2048, 16, 11008, kv=2, tie=True), "7B": Q2["7B"],
    "14B": _q(48, 5120, 40, 13824, kv=8, vocab=152064, ctx=131072, rope_scaling=_YARN128K),
    "32B": _q(64, 5120, 40, 27648, kv=8, vocab=152064, ctx=131072, rope_scaling=_YARN128K),
    "72B": Q2["72B"],
}


def _entry(name, arch, params, label, *, released, tokens, lic, repo, paper, active=None, base=None,
           objective="causal LM", notes=(), exception=None, params_src=None):
    return Entry(
        name=name, family="qwen", organisation="Alibaba Cloud (Qwen team)", released=released, params=params,
        params_label=label, active_params=active, tokens=tokens, tokenizer=TOKENIZER, license=lic, base_model=base,
        objective=objective, arch=arch, hf_id=repo,
        sources={"paper": paper, "params": params_src or hf(repo), "tokens": paper, "arch": hf_config(repo),
                 "license": lic.url},
        notes=tuple(notes), param_exception=exception,
    )


_Q15_PARAMS = {"0.5B": 0.62e9, "1.8B": 1.84e9, "4B": 3.95e9, "7B": 7.72e9, "14B": 14.2e9, "32B": 32.5e9,
               "72B": 72.3e9, "110B": 111e9}
_Q15_NOTE = ("Qwen1.5 published sizes are names; the figure here is the Hugging Face page's count of the "
             "released weights (the blog gives no exact counts)",
             "seed 000 dates Qwen1.5 to 2023-08 (that is the first Qwen-7B); Qwen1.5 came out 2024-02-05",
             "seed 003 says Qwen uses ALiBi; every Qwen generation uses RoPE")

ENTRIES = [
    _entry("Qwen-7B", QWEN_7B, 7e9, "7B", released="2023-08-03", tokens=2.4e12, lic=TONGYI, repo="Qwen/Qwen-7B",
           paper=QWEN_PAPER, exception="rounded '7B' name; the 151,936-token embedding and untied head add 1.24B "
                                       "to 6.48B of blocks (7.72B)",
           notes=("first generation (remote-code `qwen` layout; fused c_attn)", "context 8192 since the v1.1 update "
                  "(2048 at first release)")),
    *[_entry(f"Qwen1.5-{s}", a, _Q15_PARAMS[s], s, released="2024-02-05" if s not in ("32B", "110B") else
             ("2024-04-02" if s == "32B" else "2024-04-25"), tokens=None,
             lic=TONGYI_RESEARCH if s in ("0.5B", "1.8B", "4B") else TONGYI, repo=f"Qwen/Qwen1.5-{s}",
             paper=QWEN15_BLOG, notes=_Q15_NOTE + ("training tokens not disclosed",)) for s, a in Q15.items()],
    _entry("Qwen1.5-MoE-A2.7B", Q15_MOE, 14.3e9, "14.3B", active=2.7e9, released="2024-03-28", tokens=None,
           lic=TONGYI, repo="Qwen/Qwen1.5-MoE-A2.7B", paper="https://qwenlm.github.io/blog/qwen-moe/",
           params_src="https://qwenlm.github.io/blog/qwen-moe/",
           notes=("60 fine-grained experts (top-4) + a gated shared expert; upcycled from Qwen-1.8B",
                  "training tokens not disclosed")),
    *[_entry(f"Qwen2-{s}", a, p, s, released="2024-06-07", tokens=12e12 if s == "0.5B" else 7e12,
             lic=QWEN_LICENSE if s == "72B" else APACHE, repo=f"Qwen/Qwen2-{s}", paper=QWEN2_PAPER,
             params_src=QWEN2_PAPER + " (Table 1)",
             exception="the report's Table 1 rounds it to 1.5B; the weights hold 1.54B" if s == "1.5B" else None,
             notes=("seed 000 dates Qwen2 to 2024-01; it was released 2024-06-07",))
      for (s, a), p in zip(Q2.items(), (0.49e9, 1.5e9, 7.6e9, 72e9))],
    _entry("Qwen2-57B-A14B", Q2_MOE, 57e9, "57B", active=14e9, released="2024-06-07", tokens=4.5e12,
           lic=APACHE, repo="Qwen/Qwen2-57B-A14B", paper=QWEN2_PAPER, params_src=QWEN2_PAPER + " (Table 1)",
           notes=("upcycled from Qwen2-7B; 4.5T additional tokens",)),
    *[_entry(f"Qwen2.5-{s}", a, p, s, released="2024-09-19", tokens=18e12,
             lic=QWEN_RESEARCH if s == "3B" else QWEN_LICENSE if s == "72B" else APACHE, repo=f"Qwen/Qwen2.5-{s}",
             paper=QWEN25_PAPER,
             notes=(("128K context via YaRN (factor 4 over the shipped 32K config)",) if a["max_seq_len"] > 32768
                    else ()) + ("seed 000 dates Qwen2.5 to 2025-01 (the -1M models); the series came out 2024-09-19",))
      for (s, a), p in zip(Q25.items(), (0.49e9, 1.54e9, 3.09e9, 7.61e9, 14.7e9, 32.5e9, 72.7e9))],
    _entry("Qwen2.5-Math-1.5B", derive(Q25["1.5B"], max_seq_len=4096, rope_theta=10000.0), 1.54e9, "1.5B",
           released="2024-09-19", tokens=None, lic=APACHE, repo="Qwen/Qwen2.5-Math-1.5B",
           paper="https://arxiv.org/abs/2409.12122", base="Qwen2.5-1.5B",
           objective="continued pre-training on the Qwen Math Corpus v2 (1T+ tokens)",
           notes=("total training tokens not disclosed (Qwen2.5 base + the 1T+ token math corpus)",)),
    _entry("Qwen2.5-Math-7B", derive(Q25["7B"], max_seq_len=4096, rope_theta=10000.0, rope_scaling={}), 7.61e9, "7B",
           released="2024-09-19", tokens=None, lic=APACHE, repo="Qwen/Qwen2.5-Math-7B",
           paper="https://arxiv.org/abs/2409.12122", base="Qwen2.5-7B",
           objective="continued pre-training on the Qwen Math Corpus v2 (1T+ tokens)",
           notes=("total training tokens not disclosed (Qwen2.5 base + the 1T+ token math corpus)",)),
    _entry("Qwen2.5-7B-Instruct-1M", derive(Q25["7B"], max_seq_len=1010000, rope_theta=1e7, rope_scaling={}),
           7.61e9, "7B", released="2025-01-26", tokens=18e12, lic=APACHE, repo="Qwen/Qwen2.5-7B-Instruct-1M",
           paper=QWEN25_1M, base="Qwen2.5-7B", objective="long-context SFT + RL (1M tokens)",
           notes=("trained up to 256K; 1M reached with Dual Chunk Attention + sparse attention at inference",)),
    _entry("Qwen2.5-14B-Instruct-1M", derive(Q25["14B"], max_seq_len=1010000, rope_theta=1e7, rope_scaling={}),
           14.7e9, "14B", released="2025-01-26", tokens=18e12, lic=APACHE, repo="Qwen/Qwen2.5-14B-Instruct-1M",
           paper=QWEN25_1M, base="Qwen2.5-14B", objective="long-context SFT + RL (1M tokens)",
           notes=("trained up to 256K; 1M reached with Dual Chunk Attention + sparse attention at inference",)),
]
