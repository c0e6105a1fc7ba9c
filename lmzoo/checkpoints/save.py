"""lmzoo -> an HF checkpoint directory (config.json, safetensors shards + index, tokenizer files,
generation_config.json) that transformers loads with the same logits.

The inverse of loading is read off the same family adapter (weight map and transforms): every lmzoo
tensor is split back into the checkpoint tensors it was concatenated from, and each layout
transform is undone by *probing* it — transforming the element numbers 0..n-1 tells where every
element went, so any transform that moves elements (row permutations such as GPT-NeoX's per-head qkv,
pair-interleaved RoPE, GPT-2's transposes) is inverted exactly without a hand-written inverse:

    probe = arange(n).view(checkpoint shape);  moved = transform(probe)   # moved[j] = source of j
    checkpoint.flatten()[moved.flatten()] = ours.flatten()

Experts stored stacked in one checkpoint tensor ('experts.gate_up_proj[3]') are stacked back.
A GGUF-loaded model is written as the HF model of its architecture (`_HF_CONFIGS`: llama, qwen2/3,
their MoE forms, phi3, stablelm, gpt_neox, falcon, bloom, gpt2, gptj), with a config.json built from
its ModelConfig and a tokenizer.json from the GGUF vocabulary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch
from torch import nn

from lmzoo.checkpoints.build import fill_template, name_template
from lmzoo.checkpoints.checkpoint import split_index
from lmzoo.checkpoints.gguf_save import save_gguf  # noqa: F401 - GGUF out lives beside HF out
from lmzoo.checkpoints.peft import _role_ranges, layout_of
from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError, UnsupportedModelError
from lmzoo.nn.lora import lora_layers

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "qwen.tiktoken", "ice_text.model",
                   "generation_config.json")


def _invert(transform, t: torch.Tensor, cfg: ModelConfig, name: str) -> torch.Tensor:
    shapes = [tuple(t.shape)] + ([tuple(reversed(t.shape))] if t.dim() == 2 else [])
    for shape in shapes:
        probe = torch.arange(t.numel(), dtype=torch.float64).view(shape)
        try:
            moved = transform(probe, cfg)
        except Exception:  # noqa: BLE001 - this shape is not the checkpoint's; try the next
            continue
        if tuple(moved.shape) != tuple(t.shape):
            continue
        src = moved.flatten().round().long()
        if not torch.equal(src.sort().values, torch.arange(t.numel())):
            continue
        if t.is_meta:  # planning the files: the shape is all there is to know
            return torch.empty(shape, dtype=t.dtype, device="meta")
        out = torch.empty(t.numel(), dtype=t.dtype)
        out[src] = t.flatten()
        return out.view(shape)
    raise UnsupportedModelError(f"cannot invert the checkpoint layout of {name}: its transform does not only "
                                "move elements")


def _split_sizes(name: str, t: torch.Tensor, n_parts: int, cfg: ModelConfig) -> list[int]:
    if n_parts == 1:
        return [t.shape[0]]
    module = name.rsplit(".", 1)[0]
    if module.rsplit(".", 1)[-1] not in ("qkv", "gate_up"):  # e.g. per-head norms stored head by head
        if t.shape[0] % n_parts:
            raise UnsupportedModelError(f"cannot split {name} into {n_parts} checkpoint tensors")
        return [t.shape[0] // n_parts] * n_parts
    roles = _role_ranges(module, cfg, t.shape[0])
    if len(roles) != n_parts:
        raise UnsupportedModelError(f"cannot split {name} into {n_parts} checkpoint tensors")
    ends = [e for _, e in roles]
    return [e - s for s, e in zip([0] + ends, ends)]


def to_hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the checkpoint's names and layouts (the inverse of from_pretrained)."""
    layout = layout_of(model)
    return dict(hf_tensors(_model_tensors(model), model_type=layout.model_type, hf_config=layout.hf_config,
                           cfg=model.config))


def _model_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's (name, tensor) pairs the checkpoint stores: an exportable model (no LoRA layers, no
    quantised weights), buffers the layout has no tensor for left out."""
    from lmzoo.checkpoints.hf import get_adapter

    if lora_layers(model):
        raise ConfigError("the model has LoRA layers; merge them first (lmzoo merge / lmzoo.nn.lora.merge_lora) "
                          "or save the adapter (lmzoo.checkpoints.peft.save_adapter)")
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Embedding)) and hasattr(m, "dequantize"):
            raise ConfigError(f"{name} holds quantised weights; load the model with keep_quantized=False to export it")
    layout = layout_of(model)
    weights = _adapter_maps(get_adapter(layout.model_type), layout.hf_config)[0]
    params = {n for n, _ in model.named_parameters()}
    return [(n, t.detach()) for n, t in model.state_dict().items()
            if n in params or name_template(n)[0] in weights]  # a buffer the checkpoint does not store: left out


def _adapter_maps(adapter, hf_config: dict | None) -> tuple[dict, dict]:
    hf = hf_config or {}
    weights = adapter.weights(hf) if callable(adapter.weights) else adapter.weights
    transforms = (adapter.transforms(hf) if callable(adapter.transforms) else adapter.transforms) or {}
    return weights, transforms


def hf_tensors(items, *, model_type: str, hf_config: dict | None, cfg: ModelConfig):
    """(checkpoint name, tensor) for each lmzoo (name, tensor) of `items`, one at a time: each tensor is
    split into the checkpoint tensors it was concatenated from and its layout transform undone; the
    experts of a stacked tensor are stacked back as soon as a layer's set is complete. Meta tensors in,
    meta tensors out: the names and shapes alone (write_hf plans its files so)."""
    from lmzoo.checkpoints.hf import get_adapter

    weights, transforms = _adapter_maps(get_adapter(model_type), hf_config)
    stacked: dict[str, dict[int, torch.Tensor]] = {}
    for name, t in items:
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue
        template, index = name_template(name)
        if template not in weights:
            raise UnsupportedModelError(f"the {model_type!r} checkpoint layout has no tensor for {name}")
        parts = [fill_template(p, index) for p in weights[template]]
        t = t if t.is_meta else t.cpu().contiguous()
        if template in transforms:
            t = _invert(transforms[template], t, cfg, name)
        pieces = t.split(_split_sizes(name, t, len(parts), cfg), dim=0) if len(parts) > 1 else [t]
        for part, piece in zip(parts, pieces):
            base, idx = split_index(part)
            if idx is None:
                yield base, piece.contiguous()
                continue
            group = stacked.setdefault(base, {})
            group[idx] = piece
            if len(group) == cfg.n_experts:
                yield base, torch.stack([group[i] for i in range(len(group))]).contiguous()
                del stacked[base]
    for base, group in stacked.items():
        yield base, torch.stack([group[i] for i in range(len(group))]).contiguous()


# --- config.json for a GGUF-loaded model -------------------------------------------------------

_ACT = {"swiglu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new"}


def _llama_keys(cfg: ModelConfig) -> dict:
    return {"hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "hidden_act": "silu"}


def _qwen_moe_keys(cfg: ModelConfig) -> dict:
    dense = [i for i in range(cfg.n_layer) if not cfg.layer_is_moe(i)]
    return {**_llama_keys(cfg), "num_experts": cfg.n_experts, "num_experts_per_tok": cfg.n_experts_per_tok,
            "moe_intermediate_size": cfg.moe_intermediate_size, "norm_topk_prob": cfg.moe_renormalize,
            "decoder_sparse_step": 1, "mlp_only_layers": dense,
            "shared_expert_intermediate_size": cfg.shared_expert_size}


def _deepseek_keys(cfg: ModelConfig) -> dict:
    moe = [i for i in range(cfg.n_layer) if cfg.layer_is_moe(i)]
    v3 = cfg.router == "sigmoid"  # V3's router (sigmoid scores, selection bias) is DeepseekV3's class
    keys = {**_llama_keys(cfg), "num_key_value_heads": cfg.n_head, "q_lora_rank": cfg.q_lora_rank,
            "kv_lora_rank": cfg.kv_lora_rank, "qk_nope_head_dim": cfg.qk_nope_head_dim,
            "qk_rope_head_dim": cfg.qk_rope_head_dim, "v_head_dim": cfg.v_head_dim, "head_dim": cfg.qk_rope_head_dim,
            "n_routed_experts": cfg.n_experts or None, "num_experts_per_tok": cfg.n_experts_per_tok or None,
            "moe_intermediate_size": cfg.moe_intermediate_size,
            "n_shared_experts": cfg.shared_expert_size // cfg.moe_intermediate_size if cfg.n_experts else None,
            "first_k_dense_replace": moe[0] if moe else cfg.n_layer, "moe_layer_freq": 1,
            "n_group": cfg.router_groups, "topk_group": cfg.router_topk_groups,
            "routed_scaling_factor": cfg.routed_scaling, "norm_topk_prob": cfg.moe_renormalize,
            "attention_bias": cfg.qkv_bias}
    if v3:
        return {**keys, "model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"]}
    return {**keys, "topk_method": "group_limited_greedy" if cfg.router_groups > 1 else "greedy"}


# GGUF architectures -> the HF model of the same network: (class, config.json keys of the ModelConfig)
_HF_CONFIGS = {
    "llama": ("LlamaForCausalLM", lambda c: {**_llama_keys(c), "attention_bias": c.qkv_bias,
                                             "mlp_bias": c.mlp_bias}),
    "mixtral": ("MixtralForCausalLM", lambda c: {**_llama_keys(c), "num_local_experts": c.n_experts,
                                                 "num_experts_per_tok": c.n_experts_per_tok,
                                                 "intermediate_size": c.moe_intermediate_size,
                                                 "sliding_window": c.sliding_window}),
    "deepseek_v2": ("DeepseekV2ForCausalLM", _deepseek_keys),
    "qwen2": ("Qwen2ForCausalLM", _llama_keys),
    "qwen3": ("Qwen3ForCausalLM", _llama_keys),
    "qwen2_moe": ("Qwen2MoeForCausalLM", _qwen_moe_keys),
    "qwen3_moe": ("Qwen3MoeForCausalLM", _qwen_moe_keys),
    "phi3": ("Phi3ForCausalLM", lambda c: {**_llama_keys(c), "partial_rotary_factor": c.rotary_percentage,
                                           "original_max_position_embeddings": c.max_seq_len,
                                           "sliding_window": c.sliding_window}),
    "stablelm": ("StableLmForCausalLM", lambda c: {
        **{k: v for k, v in _llama_keys(c).items() if k != "rms_norm_eps"}, "layer_norm_eps": c.norm_eps,
        "partial_rotary_factor": c.rotary_percentage, "use_qkv_bias": c.qkv_bias, "qk_layernorm": c.qk_norm,
        "use_parallel_residual": c.parallel_residual}),
    "gpt_neox": ("GPTNeoXForCausalLM", lambda c: {
        "hidden_size": c.n_embd, "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "max_position_embeddings": c.max_seq_len, "layer_norm_eps": c.norm_eps,
        "rotary_pct": c.rotary_percentage, "rope_theta": c.rope_theta, "hidden_act": _ACT[c.mlp],
        "use_parallel_residual": c.parallel_residual, "attention_bias": c.qkv_bias}),
    "falcon": ("FalconForCausalLM", lambda c: {
        "hidden_size": c.n_embd, "ffn_hidden_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head, "num_kv_heads": c.n_kv_head, "new_decoder_architecture": not c.shared_norm,
        "multi_query": c.n_kv_head == 1, "parallel_attn": c.parallel_residual, "bias": c.qkv_bias, "alibi": False,
        "layer_norm_epsilon": c.norm_eps, "activation": _ACT[c.mlp], "max_position_embeddings": c.max_seq_len,
        "rope_theta": c.rope_theta}),
    "bloom": ("BloomForCausalLM", lambda c: {
        "hidden_size": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "layer_norm_epsilon": c.norm_eps,
        "seq_length": c.max_seq_len}),
    "gpt2": ("GPT2LMHeadModel", lambda c: {
        "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.intermediate_size,
        "n_positions": c.max_seq_len, "layer_norm_epsilon": c.norm_eps, "activation_function": _ACT[c.mlp]}),
    "gptj": ("GPTJForCausalLM", lambda c: {
        "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.intermediate_size,
        "n_positions": c.max_seq_len, "layer_norm_epsilon": c.norm_eps, "activation_function": _ACT[c.mlp],
        "rotary_dim": c.rope_dim}),
}


def hf_config_from(cfg: ModelConfig, model_type: str, dtype: torch.dtype) -> dict:
    if model_type not in _HF_CONFIGS:
        raise UnsupportedModelError(f"cannot write an HF config for GGUF architecture {model_type!r}; "
                                    f"supported: {', '.join(sorted(_HF_CONFIGS))}")
    if cfg.rope_scaling.kind not in ("default", "none") and cfg.rope_scaling.kind is not None:
        raise UnsupportedModelError(f"exporting RoPE scaling {cfg.rope_scaling.kind!r} from GGUF is not supported yet")
    arch, keys = _HF_CONFIGS[model_type]
    eos = list(cfg.eos_token_id)
    return {
        "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size, **keys(cfg),
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id, "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _tokenizer_files(src: Path, out: Path, tok) -> None:
    if src.is_dir():
        for f in TOKENIZER_FILES:
            if (src / f).exists():
                shutil.copy2(src / f, out / f)
        return
    if tok is None or tok._tok is None:
        return  # no tokenizer to write (SentencePiece GGUF vocabularies: not yet)
    tok._tok.save(str(out / "tokenizer.json"))
    special = {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)}
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **special}
    if tok.chat_template:
        tc["chat_template"] = tok.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))


def save_hf(model: nn.Module, out_dir, *, tokenizer=None, tokenizer_source=None, dtype: torch.dtype | None = None,
            max_shard_bytes: int = 2 << 30) -> Path:
    """Write `model` as an HF checkpoint directory (see write_hf). tokenizer_source: where the tokenizer
    files come from (an HF directory's files are copied; from a GGUF, `tokenizer` is written as
    tokenizer.json); default: the checkpoint the model was loaded from."""
    layout = layout_of(model)
    items = _model_tensors(model)
    dtype = dtype or next((t.dtype for _, t in items if t.is_floating_point()), torch.float32)
    return write_hf(out_dir, [(n, t.to("meta")) for n, t in items], lambda: iter(items), cfg=model.config,
                    model_type=layout.model_type, hf_config=layout.hf_config, from_gguf=layout.from_gguf,
                    dtype=dtype, tokenizer=tokenizer, tokenizer_source=tokenizer_source or layout.path,
                    max_shard_bytes=max_shard_bytes)


# safetensors' names of the dtypes a checkpoint holds
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def _nbytes(shape: tuple, dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _safetensors_header(entries: list[tuple[str, tuple, torch.dtype]]) -> bytes:
    """The head of a safetensors file holding `entries` (name, shape, dtype) in this order: an 8-byte
    little-endian length, then the JSON table of each tensor's dtype, shape and byte range, padded with
    spaces to a multiple of 8 (the layout safetensors' own writer produces)."""
    table: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape, dtype in entries:
        n = _nbytes(shape, dtype)
        table[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(table, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def write_safetensors(path, entries: list[tuple[str, tuple, torch.dtype]], tensors, written=None) -> None:
    """A safetensors file of `entries` (name, shape, dtype), its tensors taken one at a time from the
    (name, tensor) iterator `tensors` (in the entries' order; each cast to its entry's dtype) and
    written straight after the header. written(name, nbytes) after each."""
    with open(path, "wb") as f:
        f.write(_safetensors_header(entries))
        for name, shape, dt in entries:
            k, v = next(tensors)
            if k != name or tuple(v.shape) != shape:  # the plan and the tensors come from one function
                raise RuntimeError(f"export plan out of step: planned {name} {shape}, got {k} {tuple(v.shape)}")
            f.write(v.to(dt).contiguous().reshape(-1).view(torch.uint8).numpy().data)
            if written:
                written(name, _nbytes(shape, dt))


def write_hf(out_dir, shapes, tensors, *, cfg: ModelConfig, model_type: str, hf_config: dict | None,
             from_gguf: bool, dtype: torch.dtype, tokenizer=None, tokenizer_source=None,
             max_shard_bytes: int = 2 << 30, progress=None) -> Path:
    """An HF checkpoint directory from lmzoo tensors: `shapes`, their (name, meta tensor) pairs, and
    `tensors()`, an iterator over the same (name, tensor) pairs, consumed one at a time. The files are
    planned from the shapes (hf_tensors over meta tensors: names and shapes only); then each safetensors
    shard (up to max_shard_bytes) is written tensor by tensor under its planned header, so peak memory
    is about the largest tensor whatever the model's size (safetensors' own writer takes a whole shard
    in memory; its reader, and transformers', read these files). hf_config: the source's config.json
    (torch_dtype updated); a GGUF-loaded model's is built from `cfg`. The files go into a temporary
    directory beside `out_dir`, renamed into place at the end: a failed export leaves nothing
    half-written. progress(bytes_done, bytes_total, name) after each tensor."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose a new directory for the export")
    # before a byte is written: a GGUF architecture with no HF config fails here, not after the weights
    if hf_config and not from_gguf:
        hf = {**{k: v for k, v in hf_config.items() if k != "dtype"}, "torch_dtype": str(dtype).removeprefix("torch.")}
    else:
        hf = hf_config_from(cfg, model_type, dtype)

    def convert(items):
        return hf_tensors(items, model_type=model_type, hf_config=hf_config, cfg=cfg)

    plan = [(n, tuple(t.shape), dtype if t.is_floating_point() else t.dtype) for n, t in convert(iter(shapes))]
    shards: list[list] = [[]]
    filled = 0
    for e in plan:
        if shards[-1] and filled + _nbytes(*e[1:]) > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(e)
        filled += _nbytes(*e[1:])
    total = sum(_nbytes(*e[1:]) for e in plan)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        stream, done = convert(tensors()), 0

        def written(name: str, n: int) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total, name)

        for fname, entries in zip(names, shards):
            write_safetensors(tmp / fname, entries, stream, written)
        if len(shards) > 1:
            weight_map = {name: fname for fname, entries in zip(names, shards) for name, _, _ in entries}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(hf, indent=2))
        if tokenizer_source is not None:
            _tokenizer_files(Path(tokenizer_source), tmp, tokenizer)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
