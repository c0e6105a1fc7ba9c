"""Meta's LLaMA lineage: LLaMA (1), Llama 2, Llama 3, Llama 3.1, Llama 4 (text part)."""

from __future__ import annotations

from lmzoo.catalog._arch import layers, llama_like
from lmzoo.catalog._entry import Entry, License, hf, hf_config

LLAMA1_PAPER = "https://arxiv.org/abs/2302.13971"
LLAMA2_PAPER = "https://arxiv.org/abs/2307.09288"
LLAMA3_BLOG = "https://ai.meta.com/blog/meta-llama-3/"
LLAMA3_PAPER = "https://arxiv.org/abs/2407.21783"
LLAMA4_BLOG = "https://ai.meta.com/blog/llama-4-multimodal-intelligence/"

LLAMA1_LICENSE = License(
    name="LLaMA non-commercial research license", commercial="no",
    conditions="research use only; weights granted on application",
    url="https://github.com/meta-llama/llama/blob/llama_v1/MODEL_CARD.md")
LLAMA2_LICENSE = License(
    name="Llama 2 Community License", commercial="conditional",
    conditions="free incl. commercial use unless > 700M monthly active users (then a license from Meta); "
               "acceptable-use policy; outputs may not be used to improve other LLMs",
    url="https://ai.meta.com/llama/license/")
LLAMA3_LICENSE = License(
    name="Meta Llama 3 Community License", commercial="conditional",
    conditions="> 700M monthly active users need a license from Meta; show 'Built with Meta Llama 3'; "
               "derived model names start with 'Llama 3'; acceptable-use policy",
    url="https://llama.meta.com/llama3/license/")
LLAMA31_LICENSE = License(
    name="Llama 3.1 Community License", commercial="conditional",
    conditions="> 700M monthly active users need a license from Meta; 'Built with Llama' attribution; "
               "outputs may train other models if their names start with 'Llama'; acceptable-use policy",
    url="https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE")
LLAMA4_LICENSE = License(
    name="Llama 4 Community License", commercial="conditional",
    conditions="> 700M monthly active users need a license from Meta; 'Built with Llama' attribution; "
               "acceptable-use policy",
    url="https://github.com/meta-llama/llama-models/blob/main/models/llama4/LICENSE")

SP32K = "SentencePiece BPE, 32,000 tokens (byte fallback)"
TIKTOKEN128K = "tiktoken byte-level BPE, 128,256 tokens"

_L1 = dict(vocab_size=32000, max_seq_len=2048, norm_eps=1e-6)
LLAMA_7B = llama_like(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008, **_L1)
LLAMA_13B = llama_like(n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824, **_L1)
LLAMA_33B = llama_like(n_layer=60, n_embd=6656, n_head=52, intermediate_size=17920, **_L1)
LLAMA_65B = llama_like(n_layer=80, n_embd=8192, n_head=64, intermediate_size=22016, **_L1)

_L2 = dict(vocab_size=32000, max_seq_len=4096, norm_eps=1e-5)
LLAMA2_7B = llama_like(n_layer=32, n_embd=4096, n_head=32, intermediate_size=11008, **_L2)
LLAMA2_13B = llama_like(n_layer=40, n_embd=5120, n_head=40, intermediate_size=13824, **_L2)
LLAMA2_70B = llama_like(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, intermediate_size=28672, **_L2)

_L3 = dict(vocab_size=128256, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0)
LLAMA3_8B = llama_like(n_layer=32, n_embd=4096, n_head=32, n_kv_head=8, intermediate_size=14336, **_L3)
LLAMA3_70B = llama_like(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, intermediate_size=28672, **_L3)

_ROPE31 = dict(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)
_L31 = dict(_L3, max_seq_len=131072, rope_scaling=_ROPE31)
LLAMA31_8B = llama_like(n_layer=32, n_embd=4096, n_head=32, n_kv_head=8, intermediate_size=14336, **_L31)
LLAMA31_70B = llama_like(n_layer=80, n_embd=8192, n_head=64, n_kv_head=8, intermediate_size=28672, **_L31)
LLAMA33_70B = LLAMA31_70B
LLAMA31_405B = llama_like(n_layer=126, n_embd=16384, n_head=128, n_kv_head=8, intermediate_size=53248, **_L31)


def _llama4(*, n_experts: int, moe_every: int, max_seq_len: int, rope_scaling: dict | None) -> dict:
    """Llama 4 text decoder (HF `llama4_text`): MoE every `moe_every`-th layer with one routed expert
    (sigmoid router scaling the expert's input) plus a shared expert; every 4th layer uses no
    position encoding (NoPE) and full attention, the others RoPE + 8192-token chunked attention +
    weightless q/k norm."""
    n = 48
    rope = layers(n, lambda i: (i + 1) % 4 != 0)
    arch = llama_like(
        n_layer=n, n_embd=5120, n_head=40, n_kv_head=8, head_dim=128, intermediate_size=16384,
        vocab_size=202048, max_seq_len=max_seq_len, norm_eps=1e-5, rope_theta=500000.0,
        n_experts=n_experts, n_experts_per_tok=1, moe_intermediate_size=8192,
        moe_layers=layers(n, lambda i: (i + 1) % moe_every == 0), shared_expert_size=8192,
        shared_expert_gate=False, router="sigmoid", moe_renormalize=False, moe_scale_input=True,
        nope_layers=layers(n, lambda i: i not in rope), attention_chunk=8192, chunked_layers=rope,
        qk_norm=True, qk_norm_kind="l2", qk_norm_layers=rope, attn_temperature_floor=8192,
        attn_temperature_scale=0.1,
    )
    if rope_scaling:
        arch["rope_scaling"] = rope_scaling
    return arch


LLAMA4_SCOUT = _llama4(n_experts=16, moe_every=1, max_seq_len=10485760,
                       rope_scaling=dict(kind="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                         original_max_position=8192))
LLAMA4_MAVERICK = _llama4(n_experts=128, moe_every=2, max_seq_len=1048576, rope_scaling=None)


def _l1(name, arch, params, label, tokens, repo):
    return Entry(
        name=name, family="llama", organisation="Meta AI", released="2023-02-24", params=params,
        params_label=label, tokens=tokens, tokenizer=SP32K, license=LLAMA1_LICENSE, arch=arch, hf_id=repo,
        sources={"paper": LLAMA1_PAPER, "params": LLAMA1_PAPER + " (Table 2)", "arch": LLAMA1_PAPER + " (Table 2)",
                 "tokens": LLAMA1_PAPER + " (Table 2)", "license": LLAMA1_LICENSE.url},
        notes=("weights were released on application; the hf_id is the community conversion",),
        aliases=(name.replace("LLaMA", "LLaMA-1"), name.replace("LLaMA-", "Llama-1-")),
    )


def _l2(name, arch, label, repo, exception=None):
    return Entry(
        name=name, family="llama", organisation="Meta AI", released="2023-07-18",
        params=float(label[:-1]) * 1e9, params_label=label, tokens=2.0e12, tokenizer=SP32K,
        license=LLAMA2_LICENSE, arch=arch, hf_id=repo,
        sources={"paper": LLAMA2_PAPER, "params": LLAMA2_PAPER + " (Table 1)", "tokens": LLAMA2_PAPER + " (Table 1)",
                 "arch": hf_config(repo), "license": LLAMA2_LICENSE.url, "card": hf(repo)},
        param_exception=exception,
    )


def _l3(name, arch, label, repo, *, released, tokens, lic, src):
    return Entry(
        name=name, family="llama", organisation="Meta AI", released=released,
        params=float(label[:-1]) * 1e9, params_label=label, tokens=tokens, tokenizer=TIKTOKEN128K,
        license=lic, arch=arch, hf_id=repo,
        sources={"paper": src, "params": hf(repo), "tokens": src, "arch": hf_config(repo), "license": lic.url,
                 "card": hf(repo)},
    )


ENTRIES = [
    _l1("LLaMA-7B", LLAMA_7B, 6.7e9, "6.7B", 1.0e12, "huggyllama/llama-7b"),
    _l1("LLaMA-13B", LLAMA_13B, 13.0e9, "13.0B", 1.0e12, "huggyllama/llama-13b"),
    _l1("LLaMA-33B", LLAMA_33B, 32.5e9, "32.5B", 1.4e12, "huggyllama/llama-30b"),
    _l1("LLaMA-65B", LLAMA_65B, 65.2e9, "65.2B", 1.4e12, "huggyllama/llama-65b"),
    _l2("Llama-2-7B", LLAMA2_7B, "7B", "meta-llama/Llama-2-7b-hf",
        exception="the paper only gives the rounded size '7B'; the weights hold 6.74B (same shapes as LLaMA-7B, "
                  "which the LLaMA paper lists as 6.7B)"),
    _l2("Llama-2-13B", LLAMA2_13B, "13B", "meta-llama/Llama-2-13b-hf"),
    _l2("Llama-2-70B", LLAMA2_70B, "70B", "meta-llama/Llama-2-70b-hf"),
    _l3("Llama-3-8B", LLAMA3_8B, "8B", "meta-llama/Meta-Llama-3-8B", released="2024-04-18", tokens=15e12,
        lic=LLAMA3_LICENSE, src=LLAMA3_BLOG),
    _l3("Llama-3-70B", LLAMA3_70B, "70B", "meta-llama/Meta-Llama-3-70B", released="2024-04-18", tokens=15e12,
        lic=LLAMA3_LICENSE, src=LLAMA3_BLOG),
    _l3("Llama-3.1-8B", LLAMA31_8B, "8B", "meta-llama/Llama-3.1-8B", released="2024-07-23", tokens=15e12,
        lic=LLAMA31_LICENSE, src=LLAMA3_PAPER),
    _l3("Llama-3.1-70B", LLAMA31_70B, "70B", "meta-llama/Llama-3.1-70B", released="2024-07-23", tokens=15e12,
        lic=LLAMA31_LICENSE, src=LLAMA3_PAPER),
    _l3("Llama-3.1-405B", LLAMA31_405B, "405B", "meta-llama/Llama-3.1-405B", released="2024-07-23",
        tokens=15.6e12, lic=LLAMA31_LICENSE, src=LLAMA3_PAPER),
    Entry(
        name="Llama-3.3-70B-Instruct", family="llama", organisation="Meta AI", released="2024-12-06",
        params=70e9, params_label="70B", tokens=15e12, tokenizer=TIKTOKEN128K,
        license=License(name="Llama 3.3 Community License", commercial="conditional",
                        conditions=LLAMA31_LICENSE.conditions,
                        url="https://github.com/meta-llama/llama-models/blob/main/models/llama3_3/LICENSE"),
        arch=LLAMA33_70B, hf_id="meta-llama/Llama-3.3-70B-Instruct", objective="instruction-tuned (SFT + RLHF)",
        sources={"paper": "https://github.com/meta-llama/llama-models/blob/main/models/llama3_3/MODEL_CARD.md",
                 "params": hf("meta-llama/Llama-3.3-70B-Instruct"), "arch": hf_config("meta-llama/Llama-3.3-70B-Instruct"),
                 "license": "https://github.com/meta-llama/llama-models/blob/main/models/llama3_3/LICENSE"},
        notes=("same network as Llama 3.1 70B; the base of DeepSeek-R1-Distill-Llama-70B",),
    ),
    Entry(
        name="Llama-4-Scout-17B-16E", family="llama", organisation="Meta AI", released="2025-04-05",
        params=109e9, params_label="109B", active_params=17e9, tokens=40e12,
        tokenizer="tiktoken byte-level BPE, 202,048 tokens", license=LLAMA4_LICENSE, arch=LLAMA4_SCOUT,
        hf_id="meta-llama/Llama-4-Scout-17B-16E", objective="causal LM (natively multimodal; text decoder here)",
        sources={"paper": LLAMA4_BLOG, "params": hf("meta-llama/Llama-4-Scout-17B-16E"),
                 "tokens": hf("meta-llama/Llama-4-Scout-17B-16E"),
                 "arch": hf_config("meta-llama/Llama-4-Scout-17B-16E"), "license": LLAMA4_LICENSE.url},
        notes=("published totals include the vision encoder; the catalog counts the text decoder",
               "seed 000 gives the 10M context for Scout and 1M for Maverick, matching the model card"),
        aliases=("Llama-4-Scout",),
    ),
    Entry(
        name="Llama-4-Maverick-17B-128E", family="llama", organisation="Meta AI", released="2025-04-05",
        params=400e9, params_label="400B", active_params=17e9, tokens=22e12,
        tokenizer="tiktoken byte-level BPE, 202,048 tokens", license=LLAMA4_LICENSE, arch=LLAMA4_MAVERICK,
        hf_id="meta-llama/Llama-4-Maverick-17B-128E", objective="causal LM (natively multimodal; text decoder here)",
        sources={"paper": LLAMA4_BLOG, "params": hf("meta-llama/Llama-4-Maverick-17B-128E"),
                 "tokens": hf("meta-llama/Llama-4-Maverick-17B-128E"),
                 "arch": hf_config("meta-llama/Llama-4-Maverick-17B-128E"), "license": LLAMA4_LICENSE.url},
        notes=("MoE on every other layer (128 routed experts + 1 shared); the dense layers use a 16384-wide MLP",),
        aliases=("Llama-4-Maverick",),
    ),
]
