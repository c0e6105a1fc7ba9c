"""`lmzoo pretrain`: next-token prediction (`--objective causal`) or GLM's autoregressive blank
infilling (`--objective glm`, lmzoo.train.glm), from scratch (a catalog config shrunk with overrides) or
continued from a checkpoint, on the fine-tuning loop (same checkpoints, resume, metrics, plots).

    config (catalog name | ModelConfig JSON, + --set overrides)  or  --from CHECKPOINT
      -> model (from scratch: N(0, 0.02) weights, zero biases, unit norms; transformers' init)
    corpus files / dirs -> token file (tokenised once, lmzoo.train.corpus) -> windows of seq_len
      (glm: windows of text short enough that text + a [MASK] and a <sop> per span fit seq_len)
      -> Trainer.fit -> out/model (an HF checkpoint)

What trains (`--trainable`), for continued pretraining after a vocabulary extension — the two stages
of Chinese-LLaMA (Cui et al. 2023, section 3.3):

    full        every weight (pretraining from scratch, or plain continued pretraining)
    embeddings  stage 1: the embedding and the LM head only; the transformer blocks stay frozen, so
                the new tokens' rows adapt without disturbing what the model knows
    lora        stage 2: LoRA on the attention projections (`--lora-targets`, default q,k,v,o) plus the
                embedding and the LM head; saved with the LoRA update merged into the weights
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from lmzoo.checkpoints.peft import CheckpointLayout
from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError
from lmzoo.train.loop import SFTObjective, TrainConfig, Trainer

OBJECTIVES = ("causal", "glm")
Trainable = Literal["full", "embeddings", "lora"]
TRAINABLE = get_args(Trainable)


@dataclass
class PretrainConfig:
    data: list[str]
    out: str
    config: str | None = None            # catalog name or a JSON file of ModelConfig fields
    overrides: dict = field(default_factory=dict)
    init_from: str | None = None         # continue from this checkpoint instead
    init_std: float = 0.02               # from scratch: N(0, init_std) weights (transformers' 0.02)
    tokenizer: str | None = None         # default: the checkpoint's, else the default model's
    eval_data: list[str] | None = None
    resume: bool = False
    overwrite: bool = False
    objective: str = "causal"            # causal | glm (blank infilling, GLM / ChatGLM-6B configs)
    glm_mix: dict | None = None          # glm: the [MASK]/[sMASK]/[gMASK] row fractions (None: GLM-130B's)
    trainable: Trainable = "full"        # full | embeddings | lora (module docstring)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q,k,v,o"        # Chinese-LLaMA's stage 2: the attention projections
    train: TrainConfig = field(default_factory=TrainConfig)


def parse_overrides(items: list[str]) -> dict:
    """['n_layer=4', 'norm_eps=1e-5', 'name=tiny'] -> {'n_layer': 4, 'norm_eps': 1e-05, 'name': 'tiny'}."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set n_layer=4")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_config(name_or_file: str, overrides: dict, vocab_size: int) -> ModelConfig:
    import dataclasses

    from lmzoo.catalog import get_config

    p = Path(name_or_file)
    if p.suffix == ".json" and p.is_file():
        try:
            cfg = ModelConfig(**json.loads(p.read_text()))
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"--config {p}: not a ModelConfig JSON ({e})") from None
    else:
        cfg = get_config(name_or_file)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"--set {unknown}: not ModelConfig fields; e.g. n_layer, n_embd, n_head, n_kv_head, "
                          "intermediate_size, vocab_size, max_seq_len")
    changes = {"vocab_size": vocab_size, **overrides}
    if "n_embd" in overrides or "n_head" in overrides:
        changes.setdefault("head_dim", None)  # re-derived from the new width
    if "n_layer" in overrides and cfg.norm_placement == "deepnorm" and \
            abs(cfg.deepnorm_alpha - (2 * cfg.n_layer) ** 0.5) < 1e-9:
        changes.setdefault("deepnorm_alpha", (2 * overrides["n_layer"]) ** 0.5)  # alpha = sqrt(2 n_layer), GLM's
    cfg = cfg.replace(**changes)
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size} tokens")
    return cfg


def from_scratch_layout(cfg: ModelConfig) -> CheckpointLayout:
    """The HF checkpoint a from-scratch config is written out as (save_hf needs one): ChatGLM-6B's
    own config.json for rope_2d configs (refusing what it cannot describe), else LLaMA / Qwen, whose
    config save_hf builds from the ModelConfig."""
    if cfg.position == "rope_2d":
        return CheckpointLayout("chatglm", chatglm_v1_hf_config(cfg))
    return CheckpointLayout(_llama_like_type(cfg), {})


def _llama_like_type(cfg: ModelConfig) -> str:
    llama_like = (cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.position == "rope" and cfg.residual == "pre"
                  and cfg.attention == "standard" and not cfg.n_experts and cfg.rope_scaling.kind in ("none", "default"))
    if not llama_like:
        raise ConfigError(f"pretraining {cfg.name!r} from scratch is supported for LLaMA / Qwen-shaped configs "
                          "(RMSNorm, SwiGLU, RoPE, pre-norm, dense) and ChatGLM-6B-shaped ones; continue from a "
                          "checkpoint (--from) for others")
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


def chatglm_v1_hf_config(cfg: ModelConfig) -> dict:
    """THUDM's ChatGLM-6B config.json for a ChatGLM-6B-shaped config (the inverse of the checkpoint
    adapter's chatglm_v1_config), so a from-scratch GLM saves as a checkpoint lmzoo loads back."""
    want = dict(norm="layernorm", norm_placement="deepnorm", mlp="gelu_tanh", mlp_bias=True, qkv_bias=True,
                attn_out_bias=True, position="rope_2d", rope_theta=10000.0, rope_table_dtype="float16",
                prefix_lm=True, tie_embeddings=True, n_kv_head=cfg.n_head, head_dim=cfg.n_embd // cfg.n_head,
                deepnorm_alpha=(2 * cfg.n_layer) ** 0.5)
    off = {k: (getattr(cfg, k), v) for k, v in want.items()
           if (abs(getattr(cfg, k) - v) > 1e-9 if isinstance(v, float) else getattr(cfg, k) != v)}
    if off or len(cfg.mask_token_ids) < 2 or cfg.bos_token_id is None or not cfg.eos_token_id:
        raise ConfigError(f"a rope_2d config is saved as ChatGLM-6B, which it must match: differs in "
                          f"{ {k: f'{a!r} (ChatGLM-6B: {b!r})' for k, (a, b) in off.items()} }, needs "
                          f"mask_token_ids [gMASK, MASK] (got {list(cfg.mask_token_ids)}), bos_token_id <sop> "
                          f"(got {cfg.bos_token_id}) and eos_token_id <eop> (got {list(cfg.eos_token_id)})")
    return {"model_type": "chatglm", "architectures": ["ChatGLMModel"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd, "num_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "layernorm_epsilon": cfg.norm_eps, "inner_hidden_size": cfg.intermediate_size,
            "max_sequence_length": cfg.max_seq_len, "position_encoding_2d": True,
            "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id[0],
            "gmask_token_id": cfg.mask_token_ids[0], "mask_token_id": cfg.mask_token_ids[1],
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id[0],
            "quantization_bit": 0, "pre_seq_len": None}


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """transformers' default init for decoder LMs (initializer_range 0.02)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, std)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif hasattr(m, "weight") and isinstance(m.weight, nn.Parameter) and m.weight.dim() == 1:
            m.weight.fill_(1.0)  # norms
            if getattr(m, "bias", None) is not None and isinstance(m.bias, nn.Parameter):
                m.bias.zero_()


def tok_source(cfg: PretrainConfig) -> str:
    from lmzoo.checkpoints.assets import default_model_path

    return str(cfg.tokenizer or cfg.init_from or default_model_path())


def prepare(cfg: PretrainConfig):
    import lmzoo
    from lmzoo.nn.transformer import Transformer
    from lmzoo.tokenizer import load_tokenizer
    from lmzoo.train.corpus import TokenWindows, tokenize_corpus
    from lmzoo.train.glm import glm_text_len

    if (cfg.config is None) == (cfg.init_from is None):
        raise ConfigError("give exactly one of --config (from scratch) or --from (continue a checkpoint)")
    if not cfg.init_std > 0:
        raise ConfigError(f"--init-std must be > 0, got {cfg.init_std}")
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(f"--objective {cfg.objective!r}: expected one of {', '.join(OBJECTIVES)}")
    from lmzoo.train.loop import check_out_dir

    check_out_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    tok_path = tok_source(cfg)
    tok = load_tokenizer(tok_path)
    torch.manual_seed(cfg.train.seed)
    if cfg.init_from:
        if cfg.overrides:
            raise ConfigError("--set changes a from-scratch config; a checkpoint (--from) keeps its own")
        model = lmzoo.from_pretrained(cfg.init_from, dtype=torch.float32, keep_quantized=False, cpu_kernels=False)
        sampler = glm_sampler(cfg, model.config, tok) if cfg.objective == "glm" else None
    else:
        mc = build_config(cfg.config, cfg.overrides, tok.vocab_size)
        layout = from_scratch_layout(mc)
        sampler = glm_sampler(cfg, mc, tok) if cfg.objective == "glm" else None  # before building: errors are cheap
        model = Transformer(mc)
        init_weights(model, std=cfg.init_std)
        model.checkpoint_layout = layout
    if model.config.vocab_size < tok.vocab_size:
        raise ConfigError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                          f"({tok.vocab_size}); pass a matching --tokenizer")
    set_trainable(model, cfg)
    seq = cfg.train.seq_len
    if seq > model.config.max_seq_len:
        raise ConfigError(f"--seq-len {seq} exceeds the model's context of {model.config.max_seq_len}")
    text = seq if sampler is None else glm_text_len(seq, sampler.mask_ratio)
    # causal: each rank reads only its rows of every batch; GLM's rows are drawn whole (their blanks are
    # a function of the batch) and the loop hands each rank its part
    from lmzoo.train.parallel import current

    d = current() if sampler is None else None
    shard = dict(rank=d.dp_rank, world=d.dp_world) if d else {}
    tokens, starts, _ = tokenize_corpus(cfg.data, tok, str(Path(tok_path).resolve()))
    train = TokenWindows(tokens, starts, text, **shard)
    evals = None
    if cfg.eval_data:
        et, es, _ = tokenize_corpus(cfg.eval_data, tok, str(Path(tok_path).resolve()))
        evals = TokenWindows(et, es, text, **shard)
    return model, tok, train, evals, sampler


def set_trainable(model: nn.Module, cfg: PretrainConfig) -> None:
    """Mark what trains (`cfg.trainable`, the module docstring); LoRA layers are added here."""
    if cfg.trainable not in TRAINABLE:
        raise ConfigError(f"--trainable {cfg.trainable!r}: expected one of {', '.join(TRAINABLE)}")
    if cfg.trainable != "full" and cfg.init_from is None:
        raise ConfigError(f"--trainable {cfg.trainable} freezes a trained model's blocks; it continues a "
                          "checkpoint (--from), and a from-scratch model trains all its weights")
    from lmzoo.train.parallel import SHARDED

    if cfg.trainable != "full" and cfg.train.parallel in SHARDED:
        raise ConfigError(f"--parallel {cfg.train.parallel} splits full training; --trainable {cfg.trainable} "
                          "trains with --parallel ddp")
    for p in model.parameters():
        p.requires_grad_(cfg.trainable == "full")
    if cfg.trainable == "lora":
        from lmzoo.checkpoints.peft import add_lora

        add_lora(model, targets=cfg.lora_targets, r=cfg.lora_r, alpha=cfg.lora_alpha)
    if cfg.trainable != "full":
        for p in (*model.embed.parameters(), *model.lm_head.parameters()):
            p.requires_grad_(True)


def glm_sampler(cfg: PretrainConfig, mc: ModelConfig, tok):
    """GLM's blank sampler for this model and tokenizer; one-line ConfigErrors when the model cannot
    take GLM's inputs (no mask / <sop> / <eop> tokens, 1-D positions)."""
    from lmzoo.train.glm import GLM130B_MIX, BlankSampler, glm_tokens, sentence_end_ids

    if mc.position != "rope_2d":
        raise ConfigError(f"--objective glm needs a GLM model with 2-D positions (position='rope_2d', e.g. "
                          f"--config ChatGLM-6B); {mc.name!r} has position={mc.position!r}")
    tokens = glm_tokens(mc, tok)
    mix = cfg.glm_mix or GLM130B_MIX
    if mix.get("smask", 0) > 0 and tokens.smask is None:
        raise ConfigError(f"--glm-mix {mix} uses [sMASK], which neither the tokenizer nor the config has (a third "
                          "mask_token_ids entry)")
    try:
        return BlankSampler(tokens=tokens, mix=mix,
                            sentence_end=sentence_end_ids(tok) if mix.get("smask", 0) > 0 else None)
    except ValueError as e:
        raise ConfigError(f"--glm-mix: {e}") from None


def parse_mix(text: str | None) -> dict | None:
    """'0.4,0.3,0.3' -> {'mask': 0.4, 'smask': 0.3, 'gmask': 0.3} ([MASK], [sMASK], [gMASK] fractions)."""
    if text is None:
        return None
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3:
        raise ConfigError(f"--glm-mix {text!r}: expected three fractions MASK,sMASK,gMASK, e.g. 0.3,0,0.7")
    return dict(zip(("mask", "smask", "gmask"), parts))


def pretrain(cfg: PretrainConfig, *, progress: bool = True, log=print) -> dict:
    from lmzoo.checkpoints.save import save_hf
    from lmzoo.sizing import count_params
    from lmzoo.train import parallel

    t = cfg.train
    t.validate()
    parallel.check_batch(t.batch_size, parallel=t.parallel, tp_size=t.tp_size)  # before any work: torchrun's world
    d = parallel.init(t.parallel, t.tp_size)
    if not d.main:
        log = _quiet
    model, tok, train, evals, sampler = prepare(cfg)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {count_params(model.config).total:,} parameters ({model.config.n_layer} layers, d={model.config.n_embd}), "
        f"{n_train:,} trained ({cfg.trainable}); corpus: {len(train.tokens):,} tokens in {len(train)} windows of "
        f"{t.seq_len}")

    if sampler is not None:
        from lmzoo.train.glm import GLMObjective, glm_batches

        objective = GLMObjective(loss_chunk=t.loss_chunk)
        log(f"objective: GLM blank infilling, rows {dict(zip(('[MASK]', '[sMASK]', '[gMASK]'), sampler.p))}, "
            f"text windows of {train.seq_len} tokens (+ a mask and a <sop> per span <= {t.seq_len})")

        def make_batches(data, epoch, seed):
            return glm_batches(data, sampler, t.batch_size, seed, epoch)
    else:
        objective = SFTObjective(t.loss_chunk)

        def make_batches(data, epoch, seed):
            return data.batches(t.batch_size, seed, epoch)

    run_info = {"from": cfg.init_from, "arch": cfg.config, "overrides": cfg.overrides, "trainable": cfg.trainable,
                **({"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_targets": cfg.lora_targets}
                   if cfg.trainable == "lora" else {}),
                "data": [str(Path(d).resolve()) for d in cfg.data], "tokenizer": tok_source(cfg),
                **({"objective": "glm", "glm_mix": cfg.glm_mix} if sampler is not None else {})}
    trainer = Trainer(model, t, train, out_dir=cfg.out, eval_data=evals, objective=objective,
                      make_batches=make_batches, batches_per_epoch=max(1, len(train) // t.batch_size),
                      sharded_batches=sampler is None, resume=cfg.resume, overwrite=cfg.overwrite,
                      run_info=run_info, progress=progress)
    result = trainer.fit()
    if result["finished"]:
        out = Path(cfg.out) / "model"
        whole = trainer.export_model()  # collective when FSDP2 shards the model
        if d.main:
            if out.exists():
                import shutil

                shutil.rmtree(out)
            from lmzoo.nn.lora import merge_lora

            save_hf(merge_lora(whole), out, tokenizer=tok, tokenizer_source=tok_source(cfg))
        parallel.barrier()
        result["saved"] = str(out)
    return result


def _quiet(*_) -> None:
    pass
