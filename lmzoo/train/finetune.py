"""`lmzoo finetune`: a base model + a data file -> a LoRA / DoRA adapter (PEFT format) or full weights.

    base (HF directory or GGUF) --load--> model --add_lora (lora/dora) or unfreeze (full)-->
    data --render with the model's chat template, mask prompts, pack--> Trainer.fit -->
    out/adapter (adapter_config.json + adapter_model.safetensors)   or   out/model (full trainable state)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lmzoo.errors import ConfigError
from lmzoo.train.loop import TrainConfig, Trainer

Method = Literal["lora", "dora", "full"]


@dataclass
class FinetuneConfig:
    data: str
    out: str
    model: str | None = None             # None: the embedded default model
    method: Method = "lora"
    format: str = "auto"
    eval_data: str | None = None
    eval_fraction: float = 0.0           # held out from `data` when no eval_data is given
    targets: str = "all-linear"
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    rslora: bool = False
    skip_bad: bool = False
    too_long: str = "truncate"
    resume: bool = False
    overwrite: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)


def load_base(path: str | None, method: str):
    """The model to train, float weights (a GGUF's blocks dequantised) and its tokenizer."""
    import lmzoo
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tokenizer import load_tokenizer

    p = path or str(default_model_path())
    # LoRA keeps the base frozen: GGUF blocks may stay quantised (QLoRA-style, gradients flow through the
    # dequantised matrices); full fine-tuning needs float weights it can update
    model = lmzoo.from_pretrained(p, dtype=torch.float32, keep_quantized=method != "full", cpu_kernels=False)
    return model, load_tokenizer(p), p


def prepare(cfg: FinetuneConfig):
    from lmzoo.checkpoints.peft import add_lora
    from lmzoo.train.data import load_sft

    if cfg.method not in ("lora", "dora", "full"):
        raise ConfigError(f"method {cfg.method!r} is not known; expected lora, dora or full")
    if not 0 <= cfg.eval_fraction < 1:
        raise ConfigError(f"eval fraction must be in [0, 1), got {cfg.eval_fraction}")
    model, tok, base_path = load_base(cfg.model, cfg.method)
    t = cfg.train
    train, report = load_sft(cfg.data, tok, fmt=cfg.format, seq_len=t.seq_len, skip_bad=cfg.skip_bad,
                             too_long=cfg.too_long)
    if cfg.eval_data:
        evals, _ = load_sft(cfg.eval_data, tok, fmt=cfg.format, seq_len=t.seq_len, skip_bad=cfg.skip_bad,
                            too_long=cfg.too_long)
    elif cfg.eval_fraction:
        g = torch.Generator().manual_seed(t.seed)
        order = torch.randperm(len(train), generator=g).tolist()
        n_eval = max(1, int(len(train) * cfg.eval_fraction))
        if n_eval >= len(train):
            raise ConfigError(f"eval fraction {cfg.eval_fraction} leaves no training examples of {len(train)}")
        evals = [train[i] for i in order[:n_eval]]
        train = [train[i] for i in order[n_eval:]]
    else:
        evals = []
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        torch.manual_seed(t.seed)  # the adapters' initial A matrices
        add_lora(model, targets=cfg.targets, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                 rslora=cfg.rslora, dora=cfg.method == "dora")
    return model, tok, base_path, train, evals, report


def finetune(cfg: FinetuneConfig, *, progress: bool = True, log=print) -> dict:
    from lmzoo.checkpoints.peft import save_adapter

    model, tok, base_path, train, evals, report = prepare(cfg)
    log(f"data: {report.summary()}" + (f"; {len(evals)} eval examples" if evals else ""))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log(f"method: {cfg.method}; trainable parameters {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")
    run_info = {"base": base_path, "data": str(Path(cfg.data).resolve()), "method": cfg.method,
                "targets": cfg.targets, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                "lora_dropout": cfg.lora_dropout, "rslora": cfg.rslora, "format": cfg.format}
    trainer = Trainer(model, cfg.train, train, out_dir=cfg.out, eval_data=evals, resume=cfg.resume,
                      overwrite=cfg.overwrite, run_info=run_info, progress=progress)
    result = trainer.fit()
    out = Path(cfg.out)
    if result["finished"]:
        if cfg.method == "full":
            from safetensors.torch import save_file

            (out / "model").mkdir(exist_ok=True)
            state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            if model.config.tie_embeddings:
                state.pop("lm_head.weight", None)
            save_file(state, str(out / "model" / "model.safetensors"))
            result["saved"] = str(out / "model")
        else:
            result["saved"] = str(save_adapter(model, out / "adapter", base_model_name_or_path=base_path))
    return result
