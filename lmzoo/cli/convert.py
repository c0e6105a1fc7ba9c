"""`lmzoo convert`: checkpoint -> checkpoint, HF directory or GGUF file either way.

    lmzoo convert SmolLM2.Q4_1.gguf --to gguf --type q8_0 --out smol.q8_0.gguf
    lmzoo convert ./my-finetune --to gguf --type f16 --out mine.f16.gguf    # for llama.cpp / Ollama
    lmzoo convert model.gguf --to hf --out ./model-hf                      # for transformers

Both stream tensor by tensor, never building the model: peak memory is about the largest tensor plus
the source's memory map. Either way the result is written under a temporary name beside DST and
renamed into place, so a failure leaves nothing under DST.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from lmzoo.cli import app
from lmzoo.errors import CheckpointError, ConfigError

TO = ("hf", "gguf")


def _bar(enabled: bool):
    """(progress callback, stop) drawing a byte-progress bar on stderr."""
    if not enabled:
        return None, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("convert"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"), console=Console(stderr=True), transient=True)
    bar.start()
    task = bar.add_task("", total=None)

    def update(done: int, total: int, name: str) -> None:
        bar.update(task, completed=done, total=total, description=name)

    return update, bar.stop


@app.command()
def convert(
    src: Path = typer.Argument(..., help="An HF checkpoint directory or a .gguf file."),
    to: str = typer.Option(..., "--to", help="hf | gguf"),
    out: Path = typer.Option(..., "--out", help="The new file (gguf) or directory (hf)."),
    type: str | None = typer.Option(None, "--type", help="GGUF: f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | "
                                    "q5_1 | q4_k_m | q5_k_m | q6_k [default: f16]; "
                                    "HF: float32 | bfloat16 | float16 [default: the model's]"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Convert a checkpoint: HF <-> GGUF (llama.cpp's format, with its metadata and vocabulary)."""
    if to not in TO:
        raise ConfigError(f"--to {to!r}: expected one of {', '.join(TO)}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    try:
        if to == "gguf":
            from lmzoo.checkpoints.convert import convert_to_gguf

            update, stop = _bar(not quiet)
            try:
                summary = convert_to_gguf(src, out, type=type or "f16", overwrite=overwrite, progress=update,
                                          tokenizer=_hf_tokenizer(src))
            finally:
                stop()
            typer.echo(str(summary))
        else:
            typer.echo(_to_hf(src, out, type, overwrite, quiet))
    except OSError as e:  # disk full, permissions: nothing was left under the final name
        raise CheckpointError(f"writing {out} failed ({e.strerror or e}); nothing was written to {out}") from None


def _hf_tokenizer(src: Path):
    """An HF directory's tokenizer (None for a GGUF source, whose vocabulary is copied, or without one)."""
    from lmzoo.tokenizer import load_tokenizer

    if src.is_dir() and any((src / f).exists() for f in ("tokenizer.json", "tokenizer.model", "qwen.tiktoken")):
        return load_tokenizer(src)
    return None


def _to_hf(src: Path, out: Path, dtype: str | None, overwrite: bool, quiet: bool) -> str:
    from lmzoo.checkpoints.convert import convert_to_hf
    from lmzoo.checkpoints.gguf import gguf_metadata
    from lmzoo.dtypes import resolve_dtype
    from lmzoo.tokenizer import load_tokenizer

    tok = load_tokenizer(src) if src.is_file() and gguf_metadata(src).get("tokenizer.ggml.tokens") else None
    target = out
    if out.exists() and overwrite:  # write beside, then swap: the old copy stays until the new one is whole
        target = out.with_name(f".{out.name}.new")
        shutil.rmtree(target, ignore_errors=True)
    update, stop = _bar(not quiet)
    try:
        path = convert_to_hf(src, target, dtype=resolve_dtype(dtype), tokenizer=tok, progress=update)
    finally:
        stop()
    if target != out:
        old = out.with_name(f".{out.name}.old")
        out.rename(old)
        target.rename(out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        path = out
    files = list(Path(path).iterdir())
    model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    return f"wrote {path}: HF {model_type}, {len(files)} files, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB"
