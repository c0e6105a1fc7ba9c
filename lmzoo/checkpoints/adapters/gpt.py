"""GPT-lineage families: GPT-NeoX, GPT-J, CodeGen, GPT-2, OPT, Falcon, BLOOM."""

from __future__ import annotations

from lmzoo.checkpoints.adapters.common import (
    _plain_mlp,
    _rope_scaling,
    _rotary_fraction,
    _token_ids,
    flag,
    rope_pairs_to_halves,
    transpose,
)
from lmzoo.config import ModelConfig
from lmzoo.errors import UnsupportedModelError


def gpt_neox_config(hf: dict) -> ModelConfig:
    """GPT-NeoX / Pythia / Dolly 2.0 / RedPajama-INCITE / StableLM-alpha: LayerNorm, GELU MLP with
    biases, partial rotary, parallel (default) or sequential residual."""
    theta, scaling = _rope_scaling(hf)
    return ModelConfig(
        name=hf.get("_name_or_path") or "gpt_neox",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=hf["hidden_size"],
        n_head=hf["num_attention_heads"], intermediate_size=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_eps", 1e-5),
        mlp=_plain_mlp(hf), mlp_bias=True,
        qkv_bias=flag(hf, "attention_bias", True), attn_out_bias=flag(hf, "attention_bias", True),
        rope_theta=theta, rope_scaling=scaling, rotary_percentage=_rotary_fraction(hf),
        parallel_residual=flag(hf, "use_parallel_residual", True),
        tie_embeddings=flag(hf, "tie_word_embeddings", False),
        **_token_ids(hf),
    )

N = "gpt_neox.layers.{i}."
GPT_NEOX_WEIGHTS = {
    "embed.weight": ("gpt_neox.embed_in.weight",),
    "norm.weight": ("gpt_neox.final_layer_norm.weight",),
    "norm.bias": ("gpt_neox.final_layer_norm.bias",),
    "lm_head.weight": ("embed_out.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (N + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
                            ("attn.qkv", "attention.query_key_value"), ("attn.o", "attention.dense"),
                            ("mlp.gate_up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h"))
       for wb in ("weight", "bias")},
}

def gptj_config(hf: dict) -> ModelConfig:
    """GPT-J: one LayerNorm feeding parallel attention and MLP, pair-interleaved RoPE on the first
    rotary_dim dims of each head, no attention biases, a biased LM head."""
    d, H = hf["n_embd"], hf["n_head"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "gptj",
        vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_embd=d, n_head=H,
        intermediate_size=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=_plain_mlp(hf, "activation_function"), mlp_bias=True,
        rotary_percentage=(hf.get("rotary_dim") or d // H) / (d // H),
        parallel_residual=True, shared_norm=True, lm_head_bias=True,
        tie_embeddings=flag(hf, "tie_word_embeddings", False),
        **_token_ids(hf),
    )


J = "transformer.h.{i}."
GPTJ_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    "lm_head.bias": ("lm_head.bias",),
    "layers.{i}.attn_norm.weight": (J + "ln_1.weight",),
    "layers.{i}.attn_norm.bias": (J + "ln_1.bias",),
    "layers.{i}.attn.qkv.weight": tuple(J + f"attn.{p}_proj.weight" for p in "qkv"),
    "layers.{i}.attn.o.weight": (J + "attn.out_proj.weight",),
    "layers.{i}.mlp.gate_up.weight": (J + "mlp.fc_in.weight",),
    "layers.{i}.mlp.gate_up.bias": (J + "mlp.fc_in.bias",),
    "layers.{i}.mlp.down.weight": (J + "mlp.fc_out.weight",),
    "layers.{i}.mlp.down.bias": (J + "mlp.fc_out.bias",),
}

def codegen_qkv(t, cfg: ModelConfig):
    """CodeGen's qkv_proj was written for 4-way model parallelism: rows (4, [q, v, k], d/4, ...), each
    quarter holding n_head/4 heads. -> [q; k; v], then GPT-J's pair-interleaved RoPE -> halves."""
    import torch

    x = t.view(4, 3, cfg.n_embd // 4, *t.shape[1:])
    q, v, k = (x[:, j].reshape(cfg.n_embd, *t.shape[1:]) for j in range(3))
    return rope_pairs_to_halves(torch.cat([q, k, v]), cfg)


def codegen_config(hf: dict) -> ModelConfig:
    """CodeGen / MOSS: GPT-J's block (one LayerNorm, parallel attention + MLP, biased head) with the
    model-parallel qkv layout."""
    if hf["n_head"] % 4:
        raise UnsupportedModelError(f"CodeGen needs n_head divisible by 4 (its qkv layout), got {hf['n_head']}")
    hd = hf["n_embd"] // hf["n_head"]
    rot = min(hf.get("rotary_dim") or hd, hf.get("n_ctx", hf.get("n_positions", 2048)) // hf["n_head"])
    return gptj_config({**hf, "rotary_dim": rot})


CODEGEN_WEIGHTS = {
    **{k: v for k, v in GPTJ_WEIGHTS.items() if "attn.qkv" not in k},
    "layers.{i}.attn.qkv.weight": (J + "attn.qkv_proj.weight",),
}

def gpt2_config(hf: dict) -> ModelConfig:
    """GPT-2 / Cerebras-GPT: learned absolute positions, pre-LN, GELU (tanh) MLP, biases, tied head."""
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise UnsupportedModelError("GPT-2 attention variants scale_attn_by_inverse_layer_idx / "
                                    "reorder_and_upcast_attn are not supported")
    d = hf["n_embd"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "gpt2",
        vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_embd=d, n_head=hf["n_head"],
        intermediate_size=hf.get("n_inner") or 4 * d, max_seq_len=hf.get("n_positions", 1024),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=_plain_mlp(hf, "activation_function"), mlp_bias=True, qkv_bias=True, attn_out_bias=True,
        position="learned", tie_embeddings=flag(hf, "tie_word_embeddings", True),
        **_token_ids(hf),
    )


G = "transformer.h.{i}."
GPT2_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "pos_embed.weight": ("transformer.wpe.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (G + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2"), ("attn.qkv", "attn.c_attn"),
                            ("attn.o", "attn.c_proj"), ("mlp.gate_up", "mlp.c_fc"), ("mlp.down", "mlp.c_proj"))
       for wb in ("weight", "bias")},
}
GPT2_TRANSFORMS = {f"layers.{{i}}.{m}.weight": transpose for m in ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")}

def opt_config(hf: dict) -> ModelConfig:
    """OPT: learned positions offset by 2, ReLU MLP; pre-LN, except OPT-350m: post-LN with a narrower
    word embedding projected in and out."""
    d = hf["hidden_size"]
    pre = flag(hf, "do_layer_norm_before", True)
    return ModelConfig(
        norm_placement="pre" if pre else "post",
        final_norm=pre and not hf.get("_remove_final_layer_norm", False),
        embed_dim=hf.get("word_embed_proj_dim") or d,
        name=hf.get("_name_or_path") or "opt",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=hf["num_attention_heads"], intermediate_size=hf["ffn_dim"],
        max_seq_len=hf.get("max_position_embeddings", 2048), position="learned", position_offset=2,
        norm="layernorm", norm_eps=1e-5, mlp=_plain_mlp(hf, "activation_function"),
        mlp_bias=flag(hf, "enable_bias", True), qkv_bias=flag(hf, "enable_bias", True),
        attn_out_bias=flag(hf, "enable_bias", True),
        tie_embeddings=flag(hf, "tie_word_embeddings", True),
        **_token_ids(hf),
    )


O = "model.decoder.layers.{i}."
OPT_WEIGHTS = {
    "embed.weight": ("model.decoder.embed_tokens.weight",),
    "project_in.weight": ("model.decoder.project_in.weight",),
    "project_out.weight": ("model.decoder.project_out.weight",),
    "pos_embed.weight": ("model.decoder.embed_positions.weight",),
    "norm.weight": ("model.decoder.final_layer_norm.weight",),
    "norm.bias": ("model.decoder.final_layer_norm.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": tuple(O + f"{t}.{wb}" for t in theirs)
       for ours, theirs in (("attn_norm", ("self_attn_layer_norm",)), ("mlp_norm", ("final_layer_norm",)),
                            ("attn.qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                            ("attn.o", ("self_attn.out_proj",)), ("mlp.gate_up", ("fc1",)), ("mlp.down", ("fc2",)))
       for wb in ("weight", "bias")},
}

def grouped_qkv(t, cfg: ModelConfig):
    """Falcon's fused qkv, grouped per key/value head: (n_kv_head, g + 2, head_dim, ...) with the g
    query heads of the group, then its k and v. Covers Falcon-40B/180B (g = n_head / n_kv_head),
    Falcon-7B multi-query (one group) and MHA checkpoints (g = 1, i.e. per-head q, k, v)."""
    import torch

    g, hd = cfg.n_head // cfg.n_kv_head, cfg.head_dim
    x = t.view(cfg.n_kv_head, g + 2, hd, *t.shape[1:])
    q = x[:, :g].reshape(cfg.q_size, *t.shape[1:])
    return torch.cat([q, x[:, g].reshape(cfg.kv_size, *t.shape[1:]), x[:, g + 1].reshape(cfg.kv_size, *t.shape[1:])])


def refined_web(hf: dict) -> dict:
    """The pre-transformers Falcon configs (remote code `RW`): model_type RefinedWebModel (Falcon-7B,
    Falcon-RW-1B/7B) and RefinedWeb (Falcon-40B, the new decoder architecture, with n_head_kv).
    Same tensor names as transformers' `falcon`; only config keys differ."""
    hf = {**hf, "num_attention_heads": hf.get("num_attention_heads") or hf["n_head"],
          "num_hidden_layers": hf.get("num_hidden_layers") or hf["n_layer"]}
    if hf.get("model_type") == "RefinedWeb":
        hf |= {"new_decoder_architecture": True, "num_kv_heads": hf.get("n_head_kv") or hf.get("num_kv_heads")}
    return hf


def _falcon_layout(hf: dict) -> tuple[bool, int]:
    new = flag(hf, "new_decoder_architecture", False)
    n_ln = hf.get("num_ln_in_parallel_attn") or (2 if new else 1)
    return new, n_ln


def falcon_config(hf: dict) -> ModelConfig:
    """Falcon: RoPE, LayerNorm, GELU MLP; 7B = multi-query + parallel attention/MLP on one norm;
    40B/180B = the new decoder architecture (grouped kv heads, ln_attn + ln_mlp, parallel);
    Falcon-RW-1B/7B = ALiBi (added before the softmax scale, in bfloat16), sequential MHA with biases."""
    hf = refined_web(hf)
    new, n_ln = _falcon_layout(hf)
    parallel = new or flag(hf, "parallel_attn", True)
    if new and not hf.get("parallel_attn", True):
        raise UnsupportedModelError("Falcon new_decoder_architecture without parallel_attn is not supported")
    H = hf["num_attention_heads"]
    kv = (hf.get("num_kv_heads") or H) if (new or not hf.get("multi_query", True)) else 1
    d = hf["hidden_size"]
    theta, scaling = _rope_scaling(hf)
    bias = flag(hf, "bias", False)
    return ModelConfig(
        name=hf.get("_name_or_path") or "falcon",
        vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_embd=d,
        n_head=H, n_kv_head=kv, intermediate_size=hf.get("ffn_hidden_size") or 4 * d,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp=_plain_mlp(hf, "activation"),
        mlp_bias=bias, qkv_bias=bias, attn_out_bias=bias, rope_theta=theta, rope_scaling=scaling,
        position="alibi" if hf.get("alibi") else "rope", alibi_scaled=True, alibi_dtype="bfloat16",
        parallel_residual=parallel, shared_norm=parallel and n_ln == 1,
        tie_embeddings=flag(hf, "tie_word_embeddings", True), **_token_ids(hf),
    )


def falcon_weights(hf: dict) -> dict[str, tuple[str, ...]]:
    F = "transformer.h.{i}."
    new, n_ln = _falcon_layout(refined_web(hf))
    parallel = new or flag(hf, "parallel_attn", True)
    if parallel and n_ln == 2:
        norms = {"attn_norm": "ln_attn", "mlp_norm": "ln_mlp"}
    elif parallel:
        norms = {"attn_norm": "input_layernorm"}
    else:
        norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    linears = {"attn.qkv": "self_attention.query_key_value", "attn.o": "self_attention.dense",
               "mlp.gate_up": "mlp.dense_h_to_4h", "mlp.down": "mlp.dense_4h_to_h"}
    return {
        "embed.weight": ("transformer.word_embeddings.weight",),
        "norm.weight": ("transformer.ln_f.weight",),
        "norm.bias": ("transformer.ln_f.bias",),
        "lm_head.weight": ("lm_head.weight",),
        **{f"layers.{{i}}.{ours}.{wb}": (F + f"{theirs}.{wb}",)
           for ours, theirs in {**norms, **linears}.items() for wb in ("weight", "bias")},
    }

def bloom_config(hf: dict) -> ModelConfig:
    """BLOOM / BLOOMZ: LayerNorm after the embedding, pre-LN blocks, GELU (tanh), ALiBi, biases."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise UnsupportedModelError("BLOOM with apply_residual_connection_post_layernorm=True is not supported")
    d = hf.get("hidden_size") or hf["n_embed"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "bloom",
        vocab_size=hf["vocab_size"], n_layer=hf.get("n_layer") or hf["num_hidden_layers"], n_embd=d,
        n_head=hf.get("n_head") or hf["num_attention_heads"], intermediate_size=4 * d,
        max_seq_len=hf.get("seq_length", 2048),  # trained length; ALiBi itself has no limit
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), embed_norm=True,
        mlp="gelu_tanh", mlp_bias=True, qkv_bias=True, attn_out_bias=True, position="alibi",
        tie_embeddings=flag(hf, "tie_word_embeddings", True),
        **_token_ids(hf),
    )


BL = "transformer.h.{i}."
BLOOM_WEIGHTS = {
    "embed.weight": ("transformer.word_embeddings.weight",),
    "embed_norm.weight": ("transformer.word_embeddings_layernorm.weight",),
    "embed_norm.bias": ("transformer.word_embeddings_layernorm.bias",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{wb}": (BL + f"{theirs}.{wb}",)
       for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
                            ("attn.qkv", "self_attention.query_key_value"), ("attn.o", "self_attention.dense"),
                            ("mlp.gate_up", "mlp.dense_h_to_4h"), ("mlp.down", "mlp.dense_4h_to_h"))
       for wb in ("weight", "bias")},
}


def pangu_config(hf: dict) -> ModelConfig:
    """PanGu-alpha (`gpt_pangu`, the PyTorch port of PCL's MindSpore release): GPT-2 blocks with
    separate q/k/v projections, learned positions, and a top query layer whose queries come from a
    learned query-position table (`wqe`), with ln_f applied before that layer."""
    d = hf["hidden_size"]
    return ModelConfig(
        name=hf.get("_name_or_path") or "pangu",
        vocab_size=hf["vocab_size"], n_layer=hf["num_layers"], n_embd=d, n_head=hf["num_heads"],
        intermediate_size=hf.get("intermediate_size") or 4 * d, max_seq_len=hf.get("max_position_embeddings", 1024),
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=_plain_mlp(hf, "activation_function"), mlp_bias=True, qkv_bias=True, attn_out_bias=True,
        position="learned", query_layer=True,
        attn_scale=None if hf.get("scale_attn_weights", True) else 1.0,
        tie_embeddings=flag(hf, "tie_word_embeddings", True), **_token_ids(hf),
    )


P = "transformer.h.{i}."
PANGU_WEIGHTS = {
    "embed.weight": ("transformer.wte.weight",),
    "pos_embed.weight": ("transformer.wpe.weight",),
    "query_embed.weight": ("transformer.wqe.weight",),
    "norm.weight": ("transformer.ln_f.weight",),
    "norm.bias": ("transformer.ln_f.bias",),
    "lm_head.weight": ("lm_head.weight",),
    **{f"layers.{{i}}.{ours}.{p}": tuple(P + f"{t}.{p}" for t in theirs) for p in ("weight", "bias")
       for ours, theirs in (("attn_norm", ("ln_1",)), ("mlp_norm", ("ln_2",)),
                            ("attn.qkv", ("attn.q_proj", "attn.k_proj", "attn.v_proj")), ("attn.o", ("attn.c_proj",)),
                            ("mlp.gate_up", ("mlp.c_fc",)), ("mlp.down", ("mlp.c_proj",)))},
}
