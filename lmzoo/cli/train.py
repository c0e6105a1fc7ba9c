"""`lmzoo finetune` and `lmzoo plot`: make your own assistant from a base model and a data file.

    lmzoo finetune --data chat.jsonl --out runs/mine                # LoRA on the default model
    lmzoo finetune --data alpaca.json --method dora --lora-r 16 --max-steps 200 --out runs/d
    lmzoo finetune --config run.yaml                                # the same settings as a file
    lmzoo finetune --data chat.jsonl --out runs/mine --resume       # continue a stopped run exactly
    lmzoo chat --adapter runs/mine/adapter                          # talk to the result
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lmzoo.cli import app
from lmzoo.errors import ConfigError

_TRAIN_KEYS = ("lr", "min_lr_ratio", "warmup_steps", "weight_decay", "max_steps", "epochs", "batch_size", "grad_accum",
               "max_grad_norm", "seq_len", "packing", "eval_every", "save_every", "log_every", "keep_checkpoints",
               "seed", "activation_checkpointing", "loss_chunk", "autocast_bf16", "parallel", "mixed_precision",
               "tp_size", "device", "compile")


_PARALLEL_HELP = ("Under torchrun (--nproc-per-node N): ddp (a replica per rank) | fsdp (FSDP2: parameters, "
                  "gradients and optimizer state sharded; sharded checkpoints) | tp (tensor parallelism: heads and "
                  "MLP width split over the ranks, each reading the whole batch). --batch-size is the global batch.")
_DEVICE_HELP = "auto (cuda:LOCAL_RANK when CUDA is there, else cpu) | cpu | cuda."
_MP_HELP = "fsdp: fp32 | bf16 (bf16 compute, fp32 master weights and gradient reduction)."
_BF16 = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast, fp32 master weights (default: on CUDA only; "
                     "--bf16 on the CPU is ~2x faster where it has bf16 dot products: AVX512-BF16, AMX).")


def _logger(quiet: bool):
    return (lambda *_: None) if quiet else (lambda m: typer.echo(f"lmzoo: {m}", err=True))


def _report(result: dict) -> None:
    """The run's last line on stderr (rank 0's, under torchrun): where it ended and what it saved (or
    how to continue)."""
    from lmzoo.train.parallel import current, shutdown

    main = current().main
    shutdown()
    if not main:
        return
    if result["finished"]:
        ev = f", eval loss {result['eval_loss']:.4f}" if result.get("eval_loss") is not None else ""
        typer.echo(f"lmzoo: done at step {result['step']}: loss {result['loss']:.4f}{ev}; saved {result['saved']}",
                   err=True)
    else:
        typer.echo(f"lmzoo: stopped at step {result.get('step', 0)}; checkpoint saved, continue with --resume",
                   err=True)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"--config {path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'}: "
                          f"{' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a mapping of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


@app.command()
def finetune(
    ctx: typer.Context,
    data: str | None = typer.Option(None, "--data", help="Training data: .jsonl / .json / .txt (alpaca, sharegpt, "
                                    "messages, text)."),
    out: str | None = typer.Option(None, "--out", help="Run directory (checkpoints, metrics, adapter)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Base: HF checkpoint directory or .gguf "
                                     "[default: SmolLM2-135M-Instruct]"),
    method: str = typer.Option("lora", "--method", help="lora | qlora (NF4 base) | dora | full"),
    objective: str = typer.Option("sft", "--objective", help="sft | dpo (prompt/chosen/rejected pairs)"),
    beta: float = typer.Option(0.1, "--beta", help="DPO temperature."),
    format: str = typer.Option("auto", "--format", help="auto | alpaca | sharegpt | messages | text"),
    eval_data: str | None = typer.Option(None, "--eval-data", help="Held-out data file for eval loss."),
    eval_fraction: float = typer.Option(0.0, "--eval-fraction", help="Hold this fraction of --data out for eval."),
    targets: str = typer.Option("all-linear", "--targets", help="LoRA targets: q,k,v,o,gate,up,down | all-linear "
                                "| checkpoint module names"),
    lora_r: int = typer.Option(8, "--lora-r"),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha"),
    lora_dropout: float = typer.Option(0.0, "--lora-dropout"),
    rslora: bool = typer.Option(False, "--rslora", help="Scale by alpha / sqrt(r) (rank-stabilised LoRA)."),
    lr: float = typer.Option(2e-4, "--lr"),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio", help="Cosine schedule ends at lr x this."),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Optimizer steps [default: --epochs over the data]."),
    epochs: float = typer.Option(1.0, "--epochs"),
    batch_size: int = typer.Option(4, "--batch-size", help="Packed rows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimizer step."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    seq_len: int = typer.Option(1024, "--seq-len"),
    packing: bool = typer.Option(True, "--packing/--no-packing", help="Pack examples into rows (no attention "
                                 "across them)."),
    too_long: str = typer.Option("truncate", "--too-long", help="Examples longer than --seq-len: truncate | drop | error"),
    eval_every: int = typer.Option(0, "--eval-every"),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (also at the end and on "
                                   "Ctrl-C / SIGTERM)."),
    log_every: int = typer.Option(1, "--log-every"),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="Newest checkpoints kept."),
    seed: int = typer.Option(0, "--seed"),
    loss_chunk: int = typer.Option(256, "--loss-chunk", help="Target tokens per slice of the LM head in the loss."),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing"),
    autocast_bf16: bool | None = _BF16,
    parallel: str = typer.Option("ddp", "--parallel", help=_PARALLEL_HELP),
    mixed_precision: str = typer.Option("fp32", "--mixed-precision", help=_MP_HELP),
    tp_size: int = typer.Option(1, "--tp-size", help="fsdp: tensor-parallel ranks per FSDP2 replica (a 2-D mesh; "
                                "must divide the world size)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each block (faster steps after a "
                                  "compile warm-up; needs a C++ compiler on CPU)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count bad records instead of stopping."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    config: Path | None = typer.Option(None, "--config", help="YAML / JSON file with these settings (flags given "
                                       "on the command line win)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune a model on your data: LoRA / DoRA adapters (PEFT format) or all weights."""
    from lmzoo.train.finetune import FinetuneConfig
    from lmzoo.train.finetune import finetune as run
    from lmzoo.train.loop import TrainConfig

    values = dict(ctx.params)
    if config is not None:
        from click.core import ParameterSource

        given = {k for k in values if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        file_values = _read_config(config)
        unknown = sorted(set(file_values) - set(values))
        if unknown:
            raise ConfigError(f"--config {config}: unknown settings {unknown}; expected the flags' names, e.g. lr, "
                              "lora_r, max_steps")
        values.update({k: v for k, v in file_values.items() if k not in given})
    for key in ("data", "out"):
        if not values[key]:
            raise ConfigError(f"--{key} is required (on the command line or in --config)")
    tc = TrainConfig(**{k: values[k] for k in _TRAIN_KEYS})
    fc = FinetuneConfig(data=values["data"], out=values["out"], model=values["model"], method=values["method"],
                        objective=values["objective"], beta=values["beta"],
                        format=values["format"], eval_data=values["eval_data"], eval_fraction=values["eval_fraction"],
                        targets=values["targets"], lora_r=values["lora_r"], lora_alpha=values["lora_alpha"],
                        lora_dropout=values["lora_dropout"], rslora=values["rslora"], skip_bad=values["skip_bad"],
                        too_long=values["too_long"], resume=values["resume"], overwrite=values["overwrite"], train=tc)
    if fc.too_long not in ("truncate", "drop", "error"):
        raise ConfigError(f"--too-long must be truncate, drop or error, got {fc.too_long!r}")
    log = _logger(values["quiet"])
    result = run(fc, progress=not values["quiet"], log=log)
    _report(result)


@app.command()
def plot(run_dir: Path = typer.Argument(..., help="A run directory (lmzoo finetune --out).")) -> None:
    """Draw a run's loss curve (metrics.jsonl) to RUN_DIR/loss.png."""
    from lmzoo.train.plot import plot_metrics

    out = plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png")
    if out is None:
        raise ConfigError(f"{run_dir} has no metrics.jsonl with any step; expected an lmzoo finetune run directory")
    typer.echo(str(out))


@app.command()
def merge(
    adapter: Path = typer.Option(..., "--adapter", help="A PEFT LoRA/DoRA adapter directory."),
    out: Path = typer.Option(..., "--out", help="New directory for the merged HF checkpoint."),
    model: str | None = typer.Option(None, "--model", "-m", help="The adapter's base [default: the adapter's "
                                     "base_model_name_or_path]"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [default: the base's]"),
) -> None:
    """Fold an adapter into its base model and write an HF checkpoint (transformers loads it)."""
    import lmzoo
    from lmzoo.checkpoints.peft import read_adapter_config
    from lmzoo.checkpoints.save import save_hf
    from lmzoo.dtypes import resolve_dtype
    from lmzoo.nn.lora import merge_lora
    from lmzoo.tokenizer import load_tokenizer

    base = model or read_adapter_config(adapter).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{adapter}/adapter_config.json names no base model; pass --model")
    m = lmzoo.from_pretrained(base, keep_quantized=False, cpu_kernels=False, adapter=adapter)
    merge_lora(m)
    path = save_hf(m, out, tokenizer=load_tokenizer(base, vocab_size=m.config.vocab_size), dtype=resolve_dtype(dtype))
    typer.echo(str(path))


@app.command()
def export(
    out: Path = typer.Option(..., "--out", help="New directory (hf) or file (gguf)."),
    model: str | None = typer.Option(None, "--model", "-m", help="HF directory or .gguf [default: SmolLM2-135M-Instruct]"),
    dtype: str | None = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 [default: the model's]"),
    to: str = typer.Option("hf", "--to", help="hf | gguf (llama.cpp / Ollama / LM Studio)"),
    type: str = typer.Option("f16", "--type", help="GGUF: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1 | "
                                                  "q4_k_m | q5_k_m | q6_k"),
    overwrite: bool = typer.Option(False, "--overwrite", help="GGUF: replace the file if it exists."),
) -> None:
    """Write any model lmzoo loads (GGUF included) as an HF checkpoint (config.json, safetensors,
    tokenizer) or a GGUF file with llama.cpp's metadata and vocabulary (see also `lmzoo convert`)."""
    import lmzoo
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.checkpoints.save import save_hf
    from lmzoo.dtypes import resolve_dtype
    from lmzoo.tokenizer import load_tokenizer

    if to not in ("hf", "gguf"):
        raise ConfigError(f"--to {to!r}: expected hf or gguf")
    src = model or str(default_model_path())
    m = lmzoo.from_pretrained(src, keep_quantized=False, cpu_kernels=False)
    if to == "gguf":
        from lmzoo.cli.convert import _hf_tokenizer

        tok = _hf_tokenizer(Path(src))
        typer.echo(str(lmzoo.save_gguf(m, tok, out, type, overwrite=overwrite)))
        return
    tok = load_tokenizer(src, vocab_size=m.config.vocab_size)
    typer.echo(str(save_hf(m, out, tokenizer=tok, dtype=resolve_dtype(dtype))))



@app.command()
def pretrain(
    data: list[str] = typer.Option(..., "--data", help="Corpus: text / JSONL files or directories (repeatable)."),
    out: str = typer.Option(..., "--out", help="Run directory (checkpoints, metrics, the model)."),
    config: str | None = typer.Option(None, "--config", help="From scratch: a catalog name (lmzoo list) or a "
                                      "ModelConfig JSON file."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config field, e.g. --set n_layer=4 "
                                          "(repeatable)."),
    init_from: str | None = typer.Option(None, "--from", help="Continue pretraining this checkpoint instead."),
    init_std: float = typer.Option(0.02, "--init-std", help="From scratch: weights ~ N(0, STD). DeepNorm-style "
                                   "models (ChatGLM-6B shapes) learn far faster at small widths with ~0.1."),
    objective: str = typer.Option("causal", "--objective", help="causal (next-token prediction) | glm (GLM's "
                                  "autoregressive blank infilling; GLM configs such as ChatGLM-6B)."),
    glm_mix: str | None = typer.Option(None, "--glm-mix", help="glm: fractions MASK,sMASK,gMASK of "
                                       "rows given short spans, sentences, a long suffix [default: GLM-130B's "
                                       "0.3,0,0.7]"),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer source [default: the checkpoint's, "
                                         "else SmolLM2's]"),
    trainable: str = typer.Option("full", "--trainable", help="full | embeddings (Chinese-LLaMA stage 1: the "
                                  "embedding and LM head only) | lora (stage 2: LoRA on --lora-targets + the "
                                  "embedding and LM head; saved merged)."),
    lora_r: int = typer.Option(8, "--lora-r", help="--trainable lora: the rank."),
    lora_alpha: float = typer.Option(16.0, "--lora-alpha", help="--trainable lora: the scale numerator."),
    lora_targets: str = typer.Option("q,k,v,o", "--lora-targets", help="--trainable lora: the projections "
                                     "(as lmzoo finetune --targets)."),
    eval_data: list[str] | None = typer.Option(None, "--eval-data", help="Held-out corpus for eval loss."),
    lr: float = typer.Option(3e-4, "--lr"),
    min_lr_ratio: float = typer.Option(0.1, "--min-lr-ratio"),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    weight_decay: float = typer.Option(0.1, "--weight-decay"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    epochs: float = typer.Option(1.0, "--epochs"),
    batch_size: int = typer.Option(8, "--batch-size", help="Windows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm"),
    seq_len: int = typer.Option(256, "--seq-len"),
    eval_every: int = typer.Option(0, "--eval-every"),
    save_every: int = typer.Option(0, "--save-every"),
    log_every: int = typer.Option(1, "--log-every"),
    seed: int = typer.Option(0, "--seed"),
    activation_checkpointing: bool = typer.Option(False, "--activation-checkpointing"),
    autocast_bf16: bool | None = _BF16,
    parallel: str = typer.Option("ddp", "--parallel", help=_PARALLEL_HELP),
    mixed_precision: str = typer.Option("fp32", "--mixed-precision", help=_MP_HELP),
    tp_size: int = typer.Option(1, "--tp-size", help="fsdp: tensor-parallel ranks per FSDP2 replica (a 2-D mesh; "
                                "must divide the world size)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each block (faster steps after a "
                                  "compile warm-up; needs a C++ compiler on CPU)."),
    resume: bool = typer.Option(False, "--resume"),
    overwrite: bool = typer.Option(False, "--overwrite"),
    quiet: bool = typer.Option(False, "--quiet"),
) -> None:
    """Pretrain with next-token prediction or GLM blank infilling: from scratch (--config, --set) or
    continued (--from)."""
    from lmzoo.train.loop import TrainConfig
    from lmzoo.train.pretrain import PretrainConfig, parse_mix, parse_overrides
    from lmzoo.train.pretrain import pretrain as run

    tc = TrainConfig(lr=lr, min_lr_ratio=min_lr_ratio, warmup_steps=warmup_steps, weight_decay=weight_decay,
                     max_steps=max_steps, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
                     max_grad_norm=max_grad_norm, seq_len=seq_len, packing=False, eval_every=eval_every,
                     save_every=save_every, log_every=log_every, seed=seed,
                     activation_checkpointing=activation_checkpointing, autocast_bf16=autocast_bf16,
                     parallel=parallel, mixed_precision=mixed_precision, tp_size=tp_size, device=device,
                     compile=compile)
    pc = PretrainConfig(data=data, out=out, config=config, overrides=parse_overrides(set_ or []), init_from=init_from,
                        tokenizer=tokenizer, eval_data=eval_data, resume=resume, overwrite=overwrite, train=tc,
                        objective=objective, glm_mix=parse_mix(glm_mix), init_std=init_std, trainable=trainable,
                        lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=lora_targets)
    log = _logger(quiet)
    result = run(pc, progress=not quiet, log=log)
    _report(result)
