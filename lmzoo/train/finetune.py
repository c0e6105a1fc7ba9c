"""`lmzoo finetune`: a base model + a data file -> a LoRA / DoRA adapter (PEFT format) or full weights.

    base (HF directory or GGUF) --load--> model --add_lora (lora/dora) or unfreeze (full)-->
    data --render with the model's chat template, mask prompts, pack--> Trainer.fit -->
    out/adapter (adapter_config.json + adapter_model.safetensors)   or   out/model (an HF checkpoint)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lmzoo.errors import ConfigError
from lmzoo.train.loop import TrainConfig, Trainer

Method = Literal["lora", "qlora", "dora", "full"]


@dataclass
class FinetuneConfig:
    data: str
    out: str
    model: str | None = None             # None: the embedded default model
    method: Method = "lora"
    objective: str = "sft"               # sft | dpo
    beta: float = 0.1                    # DPO's temperature
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
    # LoRA keeps the base frozen: GGUF blocks may stay quantised (gradients flow through the dequantised
    # matrices); QLoRA re-quantises the float base to NF4; full fine-tuning needs float weights
    model = lmzoo.from_pretrained(p, dtype=torch.float32, keep_quantized=method in ("lora", "dora"),
                                  cpu_kernels=False)
    if method == "qlora":  # QLoRA (Dettmers et al. 2023): frozen NF4 base, blocks of 64, LM head kept float
        from lmzoo.quant.layers import quantize

        quantize(model, mode="nf4", include_head=False)
    return model, load_tokenizer(p, vocab_size=model.config.vocab_size), p


def _load_data(cfg: FinetuneConfig, path, tok):
    from lmzoo.train.data import DataReport, load_sft

    t = cfg.train
    if cfg.objective == "dpo":
        from lmzoo.train.dpo import load_pairs

        pairs, skipped = load_pairs(path, tok, seq_len=t.seq_len, skip_bad=cfg.skip_bad)
        report = DataReport(records=len(pairs) + len(skipped), examples=len(pairs), skipped=skipped)
        return pairs, report
    return load_sft(path, tok, fmt=cfg.format, seq_len=t.seq_len, skip_bad=cfg.skip_bad, too_long=cfg.too_long)


def prepare(cfg: FinetuneConfig):
    from lmzoo.checkpoints.peft import add_lora

    if cfg.method not in ("lora", "qlora", "dora", "full"):
        raise ConfigError(f"method {cfg.method!r} is not known; expected lora, qlora, dora or full")
    if cfg.objective not in ("sft", "dpo"):
        raise ConfigError(f"objective {cfg.objective!r} is not known; expected sft or dpo")
    if not 0 <= cfg.eval_fraction < 1:
        raise ConfigError(f"eval fraction must be in [0, 1), got {cfg.eval_fraction}")
    from lmzoo.train.loop import check_out_dir

    check_out_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    model, tok, base_path = load_base(cfg.model, cfg.method)
    t = cfg.train
    train, report = _load_data(cfg, cfg.data, tok)
    if cfg.eval_data:
        evals, _ = _load_data(cfg, cfg.eval_data, tok)
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
    from lmzoo.train import parallel

    cfg.train.validate()
    parallel.check_batch(cfg.train.batch_size, parallel=cfg.train.parallel, tp_size=cfg.train.tp_size)  # torchrun's
    if cfg.train.parallel in parallel.SHARDED and cfg.method != "full":
        raise ConfigError(f"--parallel {cfg.train.parallel} splits full training (--method full); adapters "
                          "(LoRA / DoRA / QLoRA) train with --parallel ddp")
    d = parallel.init(cfg.train.parallel, cfg.train.tp_size)
    if not d.main:
        log = _quiet
    model, tok, base_path, train, evals, report = prepare(cfg)
    log(f"data: {report.summary()}" + (f"; {len(evals)} eval examples" if evals else ""))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from lmzoo.sizing import count_params

    n_all = count_params(model.config).total  # quantised bases hold their weights in buffers
    log(f"method: {cfg.method}; trainable parameters {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")
    objective, make_batches = None, None
    if cfg.objective == "dpo":
        objective, make_batches = _dpo_setup(cfg, model, train, evals)
    run_info = {"base": base_path, "data": str(Path(cfg.data).resolve()), "method": cfg.method,
                "objective": cfg.objective, "beta": cfg.beta,
                "targets": cfg.targets, "lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha,
                "lora_dropout": cfg.lora_dropout, "rslora": cfg.rslora, "format": cfg.format}
    trainer = Trainer(model, cfg.train, train, out_dir=cfg.out, eval_data=evals, resume=cfg.resume,
                      overwrite=cfg.overwrite, run_info=run_info, progress=progress, objective=objective,
                      make_batches=make_batches)
    if cfg.objective == "dpo" and d.main:
        _save_reference(Path(cfg.out), train, evals)
    result = trainer.fit()
    out = Path(cfg.out)
    if result["finished"]:
        whole = trainer.export_model()  # collective when FSDP2 shards the model
        if cfg.method == "full":
            from lmzoo.checkpoints.save import save_hf

            if d.main:
                if (out / "model").exists():
                    import shutil

                    shutil.rmtree(out / "model")
                save_hf(whole, out / "model", tokenizer=tok)
            result["saved"] = str(out / "model")
        else:
            if d.main:
                save_adapter(whole, out / "adapter", base_model_name_or_path=base_path)
            result["saved"] = str(out / "adapter")
        parallel.barrier()
    return result


def _quiet(*_) -> None:
    pass


# --- DPO: the reference log-probs are the model's before the first step, computed once and kept in the
# run directory (a resumed run's weights are no longer the reference)

REF_FILE = "reference_logprobs.json"


def _dpo_setup(cfg: FinetuneConfig, model, train, evals):
    import json

    from lmzoo.train.dpo import DPOObjective, pair_batches, pair_groups, reference_logprobs

    objective = DPOObjective(cfg.beta, cfg.train.loss_chunk)
    ref_path = Path(cfg.out) / REF_FILE
    if cfg.resume and ref_path.exists():
        saved = json.loads(ref_path.read_text())
        for key, pairs in (("train", train), ("eval", evals)):
            if len(saved[key]) != len(pairs):
                raise ConfigError(f"{ref_path} holds {len(saved[key])} {key} pairs but the data has {len(pairs)}; "
                                  "resume with the same data")
            for p, (c, r) in zip(pairs, saved[key]):
                p.ref_chosen, p.ref_rejected = c, r
    else:
        # under the run's precision where the run computes on this device, and in the batches of the
        # first epoch (and of the evaluation), so that at the first step the policy's log-probs are the
        # reference's exactly (the loss ln 2)
        dev, t = next(model.parameters()).device, cfg.train
        groups = [g for data in (train, evals)
                  for g in pair_groups(data, pairs_per_batch=t.batch_size, seed=t.seed, epoch=0)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev == t.torch_device() and t.bf16_on(dev)):
            reference_logprobs(model, train + evals, chunk=t.loss_chunk, groups=groups)
    t = cfg.train

    def make_batches(data, epoch, seed):
        return pair_batches(data, pairs_per_batch=t.batch_size, seed=seed, epoch=epoch)

    return objective, make_batches


def _save_reference(out: Path, train, evals) -> None:
    import json

    from lmzoo.train.loop import _atomic_write

    if not (out / REF_FILE).exists():
        data = {k: [[p.ref_chosen, p.ref_rejected] for p in v] for k, v in (("train", train), ("eval", evals))}
        _atomic_write(out / REF_FILE, json.dumps(data))
