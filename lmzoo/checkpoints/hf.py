"""Hugging Face checkpoints -> lmzoo: one adapter per `model_type`.

An adapter is two things:
  * `config(hf: dict) -> ModelConfig`   translate config.json into our named switches
  * `weights`: canonical name -> the HF tensor names that make it, concatenated along dim 0
     (how q/k/v and gate/up are fused). `{i}` stands for the layer index, `{e}` for an expert.
  plus optional `transforms` for layout changes (fused per-head qkv, Conv1D, rope pair order).

Families live in lmzoo/checkpoints/adapters/ (common.py, llama_like.py, gpt.py, moe.py); adding one that
reuses existing names is a row below.
"""

from __future__ import annotations

from lmzoo.checkpoints.adapters.common import LLAMA_WEIGHTS, Adapter, llama_config, per_head_qkv, rope_pairs_to_halves
from lmzoo.checkpoints.adapters.gpt import (
    BLOOM_WEIGHTS,
    CODEGEN_WEIGHTS,
    GPT2_TRANSFORMS,
    GPT2_WEIGHTS,
    GPT_NEOX_WEIGHTS,
    GPTJ_WEIGHTS,
    OPT_WEIGHTS,
    PANGU_WEIGHTS,
    bloom_config,
    codegen_config,
    codegen_qkv,
    falcon_config,
    falcon_weights,
    gpt2_config,
    gpt_neox_config,
    gptj_config,
    grouped_qkv,
    opt_config,
    pangu_config,
)
from lmzoo.checkpoints.adapters.llama_like import (
    BAICHUAN_WEIGHTS,
    GLM_TRANSFORMS,
    GLM_WEIGHTS,
    PHI3_WEIGHTS,
    QWEN_WEIGHTS,
    baichuan_config,
    baichuan_transforms,
    chatglm_any_config,
    chatglm_any_transforms,
    chatglm_any_weights,
    glm_config,
    phi3_config,
    qwen2_config,
    qwen3_config,
    qwen_config,
    stablelm_config,
    stablelm_weights,
)
from lmzoo.checkpoints.adapters.moe import (
    DEEPSEEK_TRANSFORMS,
    LLAMA4_MULTIMODAL_WEIGHTS,
    LLAMA4_TRANSFORMS,
    LLAMA4_VISION,
    LLAMA4_WEIGHTS,
    MIXTRAL_WEIGHTS,
    QWEN_MOE_WEIGHTS,
    deepseek_transforms,
    deepseek_v2_config,
    deepseek_v3_config,
    deepseek_weights,
    grok1_config,
    grok1_weights,
    llama4_config,
    llama4_multimodal_config,
    mixtral_config,
    qwen2_moe_config,
    qwen3_moe_config,
)
from lmzoo.errors import UnsupportedModelError

FALCON = Adapter(falcon_config, falcon_weights,
                 transforms={"layers.{i}.attn.qkv.weight": grouped_qkv, "layers.{i}.attn.qkv.bias": grouped_qkv})

ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter(llama_config, LLAMA_WEIGHTS),
    "mistral": Adapter(llama_config, LLAMA_WEIGHTS),
    "qwen2": Adapter(qwen2_config, LLAMA_WEIGHTS),
    "qwen3": Adapter(qwen3_config, LLAMA_WEIGHTS),
    "baichuan": Adapter(baichuan_config, BAICHUAN_WEIGHTS, transforms=baichuan_transforms),
    "qwen": Adapter(qwen_config, QWEN_WEIGHTS),
    "mixtral": Adapter(mixtral_config, MIXTRAL_WEIGHTS, experts="model.layers.{i}.mlp.experts"),
    "qwen2_moe": Adapter(qwen2_moe_config, QWEN_MOE_WEIGHTS, experts="model.layers.{i}.mlp.experts"),
    "qwen3_moe": Adapter(qwen3_moe_config, QWEN_MOE_WEIGHTS, experts="model.layers.{i}.mlp.experts"),
    "deepseek_v2": Adapter(deepseek_v2_config, deepseek_weights, transforms=DEEPSEEK_TRANSFORMS,
                           experts="model.layers.{i}.mlp.experts"),
    "llama4_text": Adapter(llama4_config, LLAMA4_WEIGHTS, transforms=LLAMA4_TRANSFORMS,
                           experts="model.layers.{i}.feed_forward.experts"),
    "grok-1": Adapter(grok1_config, grok1_weights),
    "gpt_pangu": Adapter(pangu_config, PANGU_WEIGHTS, ignore=("attn.bias", "attn.masked_bias")),
    "llama4": Adapter(llama4_multimodal_config, LLAMA4_MULTIMODAL_WEIGHTS, transforms=LLAMA4_TRANSFORMS,
                      ignore=("rotary_emb.inv_freq", *LLAMA4_VISION)),
    "deepseek_v3": Adapter(deepseek_v3_config, deepseek_weights, transforms=deepseek_transforms,
                           experts="model.layers.{i}.mlp.experts"),
    "bloom": Adapter(
        bloom_config, BLOOM_WEIGHTS,
        transforms={"layers.{i}.attn.qkv.weight": per_head_qkv, "layers.{i}.attn.qkv.bias": per_head_qkv},
    ),
    "gptj": Adapter(
        gptj_config, GPTJ_WEIGHTS, ignore=("attn.bias", "attn.masked_bias", "embed_positions"),
        transforms={"layers.{i}.attn.qkv.weight": rope_pairs_to_halves},
    ),
    "codegen": Adapter(codegen_config, CODEGEN_WEIGHTS, ignore=("attn.causal_mask", "attn.bias", "attn.masked_bias"),
                       transforms={"layers.{i}.attn.qkv.weight": codegen_qkv}),
    "phi3": Adapter(phi3_config, PHI3_WEIGHTS),
    "gpt2": Adapter(gpt2_config, GPT2_WEIGHTS, ignore=("attn.bias", "attn.masked_bias"),
                    transforms=GPT2_TRANSFORMS),
    "opt": Adapter(opt_config, OPT_WEIGHTS),
    "glm": Adapter(glm_config, GLM_WEIGHTS, transforms=GLM_TRANSFORMS),
    # ChatGLM2/3, GLM-4 (THUDM layout) and ChatGLM-6B v1 (GLM proper) share the model_type
    "chatglm": Adapter(chatglm_any_config, chatglm_any_weights, transforms=chatglm_any_transforms,
                       ignore=("rotary_emb.inv_freq", "lm_head.weight")),
    "stablelm": Adapter(stablelm_config, stablelm_weights),
    "falcon": FALCON,
    # Falcon's remote-code (`RW`) configs: the same network and tensor names, older config keys
    "RefinedWebModel": FALCON,
    "RefinedWeb": FALCON,
    "gpt_neox": Adapter(
        gpt_neox_config, GPT_NEOX_WEIGHTS,
        ignore=("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias"),
        transforms={"layers.{i}.attn.qkv.weight": per_head_qkv, "layers.{i}.attn.qkv.bias": per_head_qkv},
    ),
}


def get_adapter(model_type: str | None) -> Adapter:
    if model_type not in ADAPTERS:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]
