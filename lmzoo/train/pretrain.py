"""`lmzoo pretrain`: next-token prediction from scratch (a catalog config shrunk with overrides) or
continued from a checkpoint, on the fine-tuning loop (same checkpoints, resume, metrics, plots).

    config (catalog name | ModelConfig JSON, + --set overrides)  or  --from CHECKPOINT
      -> model (from scratch: N(0, 0.02) weights, zero biases, unit norms; transformers' init)
    corpus files / dirs -> token file (tokenised once, lmzoo.train.corpus) -> windows of seq_len
      -> Trainer.fit -> out/model (an HF checkpoint)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmzoo.config import ModelConfig
from lmzoo.errors import ConfigError
from lmzoo.train.loop import SFTObjective, TrainConfig, Trainer


@dataclass
class PretrainConfig:
    data: list[str]
    out: str
    config: str | None = None            # catalog name or a JSON file of ModelConfig fields
    overrides: dict = field(default_factory=dict)
    init_from: str | None = None         # continue from this checkpoint instead
    tokenizer: str | None = None         # default: the checkpoint's, else the default model's
    eval_data: list[str] | None = None
    resume: bool = False
    overwrite: bool = False
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
    cfg = cfg.replace(**changes)
    if cfg.vocab_size < vocab_size:
        raise ConfigError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {vocab_size} tokens")
    return cfg


def hf_model_type(cfg: ModelConfig) -> str:
    """The HF family a from-scratch config is written out as (save_hf needs one)."""
    llama_like = (cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.position == "rope" and cfg.residual == "pre"
                  and cfg.attention == "standard" and not cfg.n_experts and cfg.rope_scaling.kind in ("none", "default"))
    if not llama_like:
        raise ConfigError(f"pretraining {cfg.name!r} from scratch is supported for LLaMA / Qwen-shaped configs "
                          "(RMSNorm, SwiGLU, RoPE, pre-norm, dense); continue from a checkpoint (--from) for others")
    return "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"


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
    from lmzoo.checkpoints.peft import CheckpointLayout
    from lmzoo.nn.transformer import Transformer
    from lmzoo.tokenizer import load_tokenizer
    from lmzoo.train.corpus import TokenWindows, tokenize_corpus

    if (cfg.config is None) == (cfg.init_from is None):
        raise ConfigError("give exactly one of --config (from scratch) or --from (continue a checkpoint)")
    from lmzoo.train.loop import check_out_dir

    check_out_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    tok_path = tok_source(cfg)
    tok = load_tokenizer(tok_path)
    torch.manual_seed(cfg.train.seed)
    if cfg.init_from:
        if cfg.overrides:
            raise ConfigError("--set changes a from-scratch config; a checkpoint (--from) keeps its own")
        model = lmzoo.from_pretrained(cfg.init_from, dtype=torch.float32, keep_quantized=False, cpu_kernels=False)
    else:
        mc = build_config(cfg.config, cfg.overrides, tok.vocab_size)
        model_type = hf_model_type(mc)
        model = Transformer(mc)
        init_weights(model)
        model.checkpoint_layout = CheckpointLayout(model_type, {})
    if model.config.vocab_size < tok.vocab_size:
        raise ConfigError(f"the model's vocabulary ({model.config.vocab_size}) is smaller than the tokenizer's "
                          f"({tok.vocab_size}); pass a matching --tokenizer")
    for p in model.parameters():
        p.requires_grad_(True)
    seq = cfg.train.seq_len
    if seq > model.config.max_seq_len:
        raise ConfigError(f"--seq-len {seq} exceeds the model's context of {model.config.max_seq_len}")
    tokens, starts, _ = tokenize_corpus(cfg.data, tok, str(Path(tok_path).resolve()))
    train = TokenWindows(tokens, starts, seq)
    evals = None
    if cfg.eval_data:
        et, es, _ = tokenize_corpus(cfg.eval_data, tok, str(Path(tok_path).resolve()))
        evals = TokenWindows(et, es, seq)
    return model, tok, train, evals


def pretrain(cfg: PretrainConfig, *, progress: bool = True, log=print) -> dict:
    from lmzoo.checkpoints.save import save_hf
    from lmzoo.sizing import count_params

    model, tok, train, evals = prepare(cfg)
    t = cfg.train
    log(f"model: {count_params(model.config).total:,} parameters ({model.config.n_layer} layers, d={model.config.n_embd}); "
        f"corpus: {len(train.tokens):,} tokens in {len(train)} windows of {t.seq_len}")

    def make_batches(data, epoch, seed):
        return data.batches(t.batch_size, seed, epoch)

    run_info = {"from": cfg.init_from, "arch": cfg.config, "overrides": cfg.overrides,
                "data": [str(Path(d).resolve()) for d in cfg.data], "tokenizer": tok_source(cfg)}
    trainer = Trainer(model, t, train, out_dir=cfg.out, eval_data=evals, objective=SFTObjective(t.loss_chunk),
                      make_batches=make_batches, batches_per_epoch=max(1, len(train) // t.batch_size),
                      resume=cfg.resume, overwrite=cfg.overwrite, run_info=run_info, progress=progress)
    result = trainer.fit()
    if result["finished"]:
        out = Path(cfg.out) / "model"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        result["saved"] = str(save_hf(model, out, tokenizer=tok, tokenizer_source=tok_source(cfg)))
    return result
