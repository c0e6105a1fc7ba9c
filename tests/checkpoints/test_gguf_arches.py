"""GGUF files of every architecture lmzoo reads besides `llama` (tests/checkpoints/test_gguf.py):
a tiny random transformers model is written the way llama.cpp's converter writes it
(tests/refs/gguf_ref.py: tensor names, fused layouts, metadata keys), loaded with
lmzoo.from_pretrained, and checked against that transformers model — logits (fp32, max abs diff
<= 1e-4) and greedy generation. For F16 and Q8_0 files the transformers model first gets the values
its weights take in the file (gguf_ref.round_to_), so the same reference holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import lmzoo
from lmzoo.errors import CheckpointError
from tests.helpers import greedy_ours, greedy_ref, perturb_
from tests.refs import gguf_ref

pytest.importorskip("gguf")

V, D = 96, 64  # Q8_0 blocks need rows of multiples of 32
ATT = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=D, vocab_size=V, max_position_embeddings=64)

MLA = dict(ATT, intermediate_size=128, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=32,
           qk_rope_head_dim=8, v_head_dim=8, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
           n_shared_experts=1, first_k_dense_replace=1, pad_token_id=0, eos_token_id=2)

MODELS = {
    "qwen2moe": lambda: tf.Qwen2MoeConfig(**ATT, num_key_value_heads=2, intermediate_size=128,
                                          moe_intermediate_size=32, shared_expert_intermediate_size=96,
                                          num_experts=4, num_experts_per_tok=2),
    # a dense layer among MoE ones (mlp_only_layers): the router's presence marks the MoE layers
    "qwen2moe-dense-layer": lambda: tf.Qwen2MoeConfig(**ATT, num_key_value_heads=2, intermediate_size=128,
                                                      moe_intermediate_size=32, shared_expert_intermediate_size=96,
                                                      num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1]),
    # Llama 3.1's RoPE rule, stored by the converter as per-frequency divisors (rope_freqs)
    "llama3.1": lambda: tf.LlamaConfig(**ATT, num_key_value_heads=2, intermediate_size=128,
                                       rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                        "original_max_position_embeddings": 16}),
    # Mixtral: llama.cpp's `llama` with stacked expert tensors (q/k permuted like LLaMA's)
    "mixtral": lambda: tf.MixtralConfig(**ATT, num_key_value_heads=2, intermediate_size=64, num_local_experts=4,
                                        num_experts_per_tok=2),
    "qwen3moe": lambda: tf.Qwen3MoeConfig(**ATT, num_key_value_heads=2, intermediate_size=128, head_dim=16,
                                          moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                          norm_topk_prob=True),
    "phi3": lambda: tf.Phi3Config(**ATT, num_key_value_heads=2, intermediate_size=128, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, original_max_position_embeddings=64),
    # Phi-3 128k: LongRoPE, its factors stored as rope_factors_long / rope_factors_short
    "phi3-longrope": lambda: tf.Phi3Config(**{**ATT, "max_position_embeddings": 128}, num_key_value_heads=2,
                                           intermediate_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                           original_max_position_embeddings=32,
                                           rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                                            "short_factor": [1.0 + 0.1 * i for i in range(8)],
                                                            "long_factor": [1.5 + 0.3 * i for i in range(8)]}),
    "baichuan": lambda: tf.LlamaConfig(**ATT, intermediate_size=128, rms_norm_eps=1e-6),
    "gptneox": lambda: tf.GPTNeoXConfig(**ATT, intermediate_size=128, rotary_pct=0.25),
    "gptneox-sequential": lambda: tf.GPTNeoXConfig(**ATT, intermediate_size=128, rotary_pct=0.5,
                                                   use_parallel_residual=False),
    "falcon": lambda: tf.FalconConfig(**ATT),  # Falcon-7B: multi-query, one norm, parallel
    "falcon-40b": lambda: tf.FalconConfig(**ATT, new_decoder_architecture=True, num_kv_heads=2),
    "bloom": lambda: tf.BloomConfig(vocab_size=V, hidden_size=D, n_layer=2, n_head=4),
    "stablelm": lambda: tf.StableLmConfig(**ATT, num_key_value_heads=2, intermediate_size=128,
                                          partial_rotary_factor=0.25),
    # StableLM 2: q/k/v biases, per-head q/k LayerNorms, parallel residual with one norm
    "stablelm2": lambda: tf.StableLmConfig(**ATT, num_key_value_heads=2, intermediate_size=128,
                                           partial_rotary_factor=0.25, use_qkv_bias=True, qk_layernorm=True,
                                           use_parallel_residual=True),
    # DeepSeek: MLA (kv_b stored split as k_b / v_b), DeepSeekMoE with a leading dense layer
    "deepseek2-v2-lite": lambda: tf.DeepseekV2Config(**MLA, q_lora_rank=None, topk_method="greedy"),
    "deepseek2-v3": lambda: tf.DeepseekV3Config(**MLA, q_lora_rank=32, n_group=2, topk_group=1,
                                                routed_scaling_factor=2.5, norm_topk_prob=True),
    # V3's long-context YaRN (mscale_all_dim: the softmax temperature), read back from the metadata
    "deepseek2-v3-yarn": lambda: tf.DeepseekV3Config(**{**MLA, "max_position_embeddings": 128}, q_lora_rank=32,
                                                     n_group=2, topk_group=1,
                                                     rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                      "rope_theta": 10000.0,
                                                                      "original_max_position_embeddings": 32,
                                                                      "mscale": 0.707, "mscale_all_dim": 0.707,
                                                                      "beta_fast": 32, "beta_slow": 1}),
    "chatglm": lambda: tf.GlmConfig(**ATT, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                    pad_token_id=0),
    "glm4": lambda: tf.Glm4Config(**ATT, num_key_value_heads=2, head_dim=16, intermediate_size=128, pad_token_id=0),
    # Llama 4 Scout's shape in small: a NoPE layer every 4th (query temperature), chunked attention and
    # an L2 q/k norm on the others, MoE on every 2nd layer (sigmoid top-1 router scaling the expert's
    # input, a shared expert); the chunk (8192) and temperature floor as llama.cpp hard-codes them
    "llama4": lambda: tf.Llama4TextConfig(**{**ATT, "num_hidden_layers": 4}, num_key_value_heads=2, head_dim=16,
                                          intermediate_size=32, intermediate_size_mlp=128, num_local_experts=4,
                                          num_experts_per_tok=1, interleave_moe_layer_step=2, use_qk_norm=True,
                                          attention_chunk_size=8192, floor_scale=8192, attn_scale=0.1,
                                          pad_token_id=0, eos_token_id=2),
    "gpt2": lambda: tf.GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=64),
    "gptj": lambda: tf.GPTJConfig(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_positions=64, rotary_dim=8),
}


# written from a transformers model of the same network: Baichuan-7B is LLaMA with q, k, v fused as
# W_pack; ChatGLM2/3 / GLM-4-9B (THUDM's remote code) is transformers' `glm` with q, k, v fused
AS_ARCH = {"baichuan": "baichuan", "chatglm": "chatglm"}


def hf_model(key: str, kind: str):
    torch.manual_seed(0)
    m = tf.AutoModelForCausalLM.from_config(MODELS[key](), attn_implementation="eager")
    m = perturb_(m, scale=0.05).eval()
    gguf_ref.round_to_(m, kind)
    return m


@pytest.mark.parametrize("kind", ["F32", "F16", "Q8_0"])
@pytest.mark.parametrize("key", sorted(MODELS))
def test_matches_transformers(tmp_path, key, kind):
    ref = hf_model(key, kind)
    arch, meta, tensors = gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key))
    p = tmp_path / f"{key}-{kind}.gguf"
    gguf_ref.write_gguf(p, arch, meta, tensors, kind)
    ours = lmzoo.from_pretrained(p)
    quantised = [m for m in ours.modules() if type(m).__name__ in ("Int8Linear", "Int4Linear")]
    assert bool(quantised) == (kind == "Q8_0")  # block formats stay integer codes
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max() <= 1e-4
    assert torch.equal(greedy_ours(ours, ids, 12), greedy_ref(ref, ids, 12))


def test_dequantised_load_matches_kept_codes(tmp_path):
    """keep_quantized=False expands the same file to floats: the same function."""
    ref = hf_model("qwen2moe", "Q8_0")
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, *gguf_ref.hf_to_gguf(ref), "Q8_0")
    ids = torch.randint(0, V, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = lmzoo.from_pretrained(p, keep_quantized=False)(ids)
        b = lmzoo.from_pretrained(p)(ids)
        assert (a - b).abs().max() <= 1e-4
        assert (ref(ids).logits - a).abs().max() <= 1e-4


def test_missing_expert_metadata_names_the_key(tmp_path):
    ref = hf_model("qwen3moe", "F32")
    arch, meta, tensors = gguf_ref.hf_to_gguf(ref)
    del meta["expert_used_count"]
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, arch, meta, tensors, "F32")
    with pytest.raises(CheckpointError, match="qwen3moe.expert_used_count") as e:
        lmzoo.from_pretrained(p)
    assert "\n" not in str(e.value)


def test_longrope_past_the_original_context(tmp_path):
    """Past original_context_length LongRoPE switches to the long factors: both tables came through."""
    ref = hf_model("phi3-longrope", "F32")
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, *gguf_ref.hf_to_gguf(ref), "F32")
    ours = lmzoo.from_pretrained(p)
    assert ours.config.rope_scaling.kind == "longrope"
    ids = torch.randint(0, V, (1, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max() <= 1e-4


# peft re-targets MoE checkpoints' MLP names onto transformers 5's stacked experts: attention only there
MOE_TYPES = ("qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3")


@pytest.mark.parametrize("key", ["gptneox", "falcon", "falcon-40b", "phi3", "gptj", "stablelm2", "qwen2moe",
                                 "deepseek2-v3", "mixtral"])
def test_peft_adapter_on_a_gguf_base(tmp_path, key):
    """A LoRA made by peft on the transformers model applies to the GGUF-loaded one (its tensor names
    are the HF ones of the same architecture): the same logits."""
    peft = pytest.importorskip("peft")
    from lmzoo.checkpoints.peft import select_parts

    ref = hf_model(key, "F32")
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, *gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key)), "F32")
    chosen = select_parts(lmzoo.from_pretrained(p), "q,k,v,o" if ref.config.model_type in MOE_TYPES else "all-linear")
    leaves = sorted({n.rsplit(".", 1)[-1] for names in chosen.values() for n in names})
    torch.manual_seed(1)
    model = peft.get_peft_model(ref, peft.LoraConfig(r=4, lora_alpha=8, target_modules=leaves,
                                                     init_lora_weights=False)).eval()
    model.save_pretrained(tmp_path / "lora")
    ours = lmzoo.from_pretrained(p, adapter=tmp_path / "lora")
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids).logits - ours(ids)).abs().max() <= 1e-4


def test_deepseek2_with_kv_b_whole(tmp_path):
    """Older converters stored MLA's kv_b whole (attn_kv_b) with the per-head sizes in key_length /
    value_length and head_count_kv = head_count: read as well."""
    ref = hf_model("deepseek2-v3", "F32")
    arch, meta, tensors = gguf_ref.hf_to_gguf(ref)
    c = ref.config
    for i in range(c.num_hidden_layers):
        k_b, v_b = tensors.pop(f"blk.{i}.attn_k_b.weight"), tensors.pop(f"blk.{i}.attn_v_b.weight")
        kv = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)
        tensors[f"blk.{i}.attn_kv_b.weight"] = kv.reshape(-1, kv.shape[-1])
    for k in ("attention.key_length_mla", "attention.value_length_mla"):
        del meta[k]
    meta |= {"attention.key_length": c.qk_nope_head_dim + c.qk_rope_head_dim, "attention.value_length": c.v_head_dim,
             "attention.head_count_kv": c.num_attention_heads}
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, arch, meta, tensors, "F32")
    ours = lmzoo.from_pretrained(p)
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ref(ids).logits - ours(ids)).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["F32", "F16", "Q8_0"])
def test_qwen_first_generation(tmp_path, kind):
    """Qwen (v1) has no transformers class: tests/refs/qwen_ref.py (from its published code) is the
    reference, on weights written the way the converter's QwenModel writes them."""
    from tests.refs import qwen_ref

    d, H, F = 64, 4, 128  # F: each MLP half; the config's intermediate_size counts both
    cfg = {"hidden_size": d, "num_attention_heads": H, "num_hidden_layers": 2, "layer_norm_epsilon": 1e-6,
           "rotary_pct": 1.0, "rotary_emb_base": 10000, "seq_length": 64, "intermediate_size": 2 * F}
    g = torch.Generator().manual_seed(0)
    shapes = {"transformer.wte.weight": (V, d), "transformer.ln_f.weight": (d,), "lm_head.weight": (V, d)}
    for i in range(2):
        p = f"transformer.h.{i}."
        shapes |= {p + "ln_1.weight": (d,), p + "ln_2.weight": (d,), p + "attn.c_attn.weight": (3 * d, d),
                   p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                   p + "mlp.w1.weight": (F, d), p + "mlp.w2.weight": (F, d), p + "mlp.c_proj.weight": (d, F)}
    state = {k: (1.0 if len(s) == 1 and "bias" not in k else 0.0) + torch.randn(s, generator=g) * 0.1
             for k, s in shapes.items()}
    # the values the file holds (matrices in `kind`, vectors in F32)
    state = {k: torch.from_numpy(gguf_ref.round_values(v.numpy(), kind)) if v.ndim == 2 else v
             for k, v in state.items()}
    names = {"ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "mlp.w1": "ffn_up", "mlp.w2": "ffn_gate", "mlp.c_proj": "ffn_down"}
    tensors = {"token_embd.weight": state["transformer.wte.weight"], "output.weight": state["lm_head.weight"],
               "output_norm.weight": state["transformer.ln_f.weight"]}
    for k, v in state.items():
        if k.startswith("transformer.h."):
            i, rest = k[len("transformer.h."):].split(".", 1)
            mod, kind_ = rest.rsplit(".", 1)
            tensors[f"blk.{i}.{names[mod]}.{kind_}"] = v
    meta = {"context_length": 64, "block_count": 2, "embedding_length": d, "feed_forward_length": 2 * F,
            "rope.freq_base": 10000.0, "rope.dimension_count": d // H, "attention.head_count": H,
            "attention.layer_norm_rms_epsilon": 1e-6}
    p = tmp_path / "q.gguf"
    gguf_ref.write_gguf(p, "qwen", meta, {k: v.numpy() for k, v in tensors.items()}, kind)
    ours = lmzoo.from_pretrained(p)
    assert ours.config.intermediate_size == F
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(ids) - qwen_ref.forward(state, cfg, ids)).abs().max() <= 1e-4
    assert torch.equal(greedy_ours(ours, ids[:1], 12), qwen_ref.greedy(state, cfg, ids[:1], 12))


WIDE = dict(ATT, hidden_size=256)  # K-quant blocks span 256 columns
K_MODELS = {
    "qwen2moe": lambda: tf.Qwen2MoeConfig(**WIDE, num_key_value_heads=2, intermediate_size=256,
                                          moe_intermediate_size=256, shared_expert_intermediate_size=256,
                                          num_experts=4, num_experts_per_tok=2),
    "gptj": lambda: tf.GPTJConfig(vocab_size=V, n_embd=256, n_layer=2, n_head=4, n_positions=64, rotary_dim=16),
    "chatglm": lambda: tf.GlmConfig(**WIDE, num_key_value_heads=2, head_dim=64, intermediate_size=256,
                                    pad_token_id=0),
    "phi3": lambda: tf.Phi3Config(**WIDE, num_key_value_heads=2, intermediate_size=256, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, original_max_position_embeddings=64),
}


@pytest.mark.parametrize("key", sorted(K_MODELS))
def test_k_quant_mix_kept_as_codes_equals_decoded(tmp_path, key):
    """Q4_K_M files (Q6_K beside Q4_K inside fused projections, stacked experts, row-permuted q/k):
    the layers kept as the file's codes compute what the decoded weights do."""
    import numpy as np

    torch.manual_seed(0)
    ref = tf.AutoModelForCausalLM.from_config(K_MODELS[key]()).eval()
    arch, meta, tensors = gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key))
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, arch, meta, tensors, "Q4_K_M", rng=np.random.default_rng(0))
    kept, decoded = lmzoo.from_pretrained(p), lmzoo.from_pretrained(p, keep_quantized=False)
    assert any(type(m).__name__ == "Int4Linear" for m in kept.modules())
    ids = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = kept(ids), decoded(ids)
    assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("key", ["qwen2moe", "qwen3moe", "phi3", "gptneox", "gptneox-sequential", "falcon",
                                 "falcon-40b", "bloom", "stablelm", "stablelm2", "gpt2", "gptj", "mixtral",
                                 "deepseek2-v2-lite", "deepseek2-v3"])
def test_gguf_exports_as_the_hf_model(tmp_path, key):
    """`lmzoo export` of a GGUF-loaded model, and `lmzoo convert --to hf` streaming the file tensor by
    tensor (here into shards of ~40 kB): the HF checkpoint of the same architecture, which transformers
    loads with the original model's logits."""
    import json

    from lmzoo.checkpoints.convert import convert_to_hf
    from lmzoo.checkpoints.save import save_hf

    ref = hf_model(key, "F32")
    p = tmp_path / "m.gguf"
    gguf_ref.write_gguf(p, *gguf_ref.hf_to_gguf(ref, AS_ARCH.get(key)), "F32")
    save_hf(lmzoo.from_pretrained(p, keep_quantized=False), tmp_path / "hf")
    convert_to_hf(p, tmp_path / "streamed", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(4))
    for d in ("hf", "streamed"):
        back = tf.AutoModelForCausalLM.from_pretrained(tmp_path / d, attn_implementation="eager").eval()
        with torch.no_grad():
            assert (back(ids).logits - ref(ids).logits).abs().max() <= 1e-4, d
