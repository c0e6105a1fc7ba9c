"""TII's Falcon 7B / 40B / 180B: RoPE, LayerNorm, GELU MLP without biases, parallel attention + MLP.
7B: multi-query attention and one norm feeding both branches; 40B / 180B: the "new decoder
architecture" — 8 grouped KV heads and separate attention / MLP norms."""

from __future__ import annotations

from lmzoo.catalog._entry import Entry, License, hf, hf_config

PAPER = "https://arxiv.org/abs/2311.16867"
APACHE = License(name="Apache-2.0", commercial="yes", conditions="keep notices; patent grant",
                 url="https://huggingface.co/tiiuae/falcon-7b")
F180_LICENSE = License(name="Falcon-180B TII License", commercial="conditional",
                       conditions="commercial use allowed except offering the model as a hosted/shared service "
                                  "without a separate license; acceptable-use policy",
                       url="https://huggingface.co/spaces/tiiuae/falcon-180b-license/blob/main/LICENSE.txt")


def _falcon(n_layer, d, n_head, kv, *, new_arch):
    return dict(
        n_layer=n_layer, n_embd=d, n_head=n_head, n_kv_head=kv, head_dim=64, intermediate_size=4 * d,
        vocab_size=65024, max_seq_len=2048, norm="layernorm", norm_eps=1e-5, norm_placement="pre", mlp="gelu",
        mlp_bias=False, qkv_bias=False, attn_out_bias=False, position="rope", rope_theta=10000.0,
        rotary_percentage=1.0, attention="standard", parallel_residual=True, shared_norm=not new_arch,
        tie_embeddings=True,
    )


FALCON_7B = _falcon(32, 4544, 71, 1, new_arch=False)
FALCON_40B = _falcon(60, 8192, 128, 8, new_arch=True)
FALCON_180B = _falcon(80, 14848, 232, 8, new_arch=True)


def _e(name, arch, params, label, *, released, tokens, lic, repo, notes=(), exception=None):
    return Entry(
        name=name, family="falcon", organisation="Technology Innovation Institute (TII)", released=released,
        params=params, params_label=label, tokens=tokens, tokenizer="byte-level BPE, 65,024 tokens", license=lic,
        arch=arch, hf_id=repo, sources={"paper": PAPER, "params": PAPER, "tokens": PAPER, "arch": hf_config(repo),
                                         "license": lic.url, "card": hf(repo)},
        notes=tuple(notes), param_exception=exception,
    )


ENTRIES = [
    _e("Falcon-7B", FALCON_7B, 7e9, "7B", released="2023-05-25", tokens=1.5e12, lic=APACHE, repo="tiiuae/falcon-7b",
       notes=("first released under the TII Falcon LLM License; Apache-2.0 since 2023-05-31",)),
    _e("Falcon-40B", FALCON_40B, 40e9, "40B", released="2023-05-25", tokens=1.0e12, lic=APACHE,
       repo="tiiuae/falcon-40b",
       notes=("first released under the TII Falcon LLM License (royalties above $1M revenue); Apache-2.0 since "
              "2023-05-31",),
       exception="rounded '40B' name; 60 blocks of 679.5M and a 0.53B tied embedding hold 41.3B"),
    _e("Falcon-180B", FALCON_180B, 180e9, "180B", released="2023-09-06", tokens=3.5e12, lic=F180_LICENSE,
       repo="tiiuae/falcon-180B"),
]
