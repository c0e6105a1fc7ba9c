"""`lmzoo list | show | compare | params | memory | fit | hardware | explain`: the catalog and the sizing
estimator on the command line. Tables render with rich; `--json` prints machine-readable output.

Bad input (unknown model, negative context, unknown dtype, a GPU of 0 GB) raises an LmzooError, which
`lmzoo.cli.main` prints as one line on stderr with exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lmzoo.cli import app
from lmzoo.errors import ConfigError

JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
TaskOpt = typer.Option("infer", "--task", "-t", help="infer | train (full, AdamW) | lora | qlora")
DtypeOpt = typer.Option("bf16", "--dtype", "-d", help="fp32 | bf16 | fp16 | int8 | int4 (weights)")
ContextOpt = typer.Option(None, "--context", "-c", help="Tokens per sequence [default: the model's context]")
BatchOpt = typer.Option(1, "--batch", "-b", help="Sequences per batch.")

FIT_COMBOS = [("infer", "bf16"), ("infer", "int8"), ("infer", "int4"), ("qlora", "bf16"), ("lora", "bf16"),
              ("train", "bf16")]


def _console():
    from rich.console import Console

    return Console()


def _emit(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _fmt():
    from lmzoo.catalog.describe import fmt_bytes, fmt_count

    return fmt_count, fmt_bytes


def _check_context(context: int | None) -> None:
    if context is not None and context <= 0:
        raise ConfigError(f"--context must be a positive number of tokens, got {context}")


# --------------------------------------------------------------------------------------------------


@app.command("list")
def list_cmd(
    family: str | None = typer.Option(None, "--family", "-f", help="Only this family (llama, qwen, glm, ...)."),
    commercial: bool = typer.Option(False, "--commercial", help="Only models whose license allows commercial "
                                                                "use (possibly with conditions)."),
    fits: str | None = typer.Option(None, "--fits", help="Only models that fit in this much GPU memory, e.g. 24GB."),
    task: str = TaskOpt,
    dtype: str = DtypeOpt,
    context: int = typer.Option(4096, "--context", "-c", help="Tokens per sequence for --fits (capped at each "
                                                             "model's context)."),
    as_json: bool = JsonOpt,
) -> None:
    """The catalog: every model the seeds name, with size, context, license."""
    from lmzoo import catalog as C
    from lmzoo.sizing.estimate import estimate_memory, parse_size

    _check_context(context)
    cap = parse_size(fits) if fits else None
    rows = []
    for name in C.list_models(family=family, commercial=True if commercial else None):
        e = C.get_entry(name)
        n = C.count_params(name)
        row = {"name": name, "family": e.family, "organisation": e.organisation, "released": e.released,
               "params": n.total, "active_params": n.active if n.active != n.total else None,
               "context": e.context, "commercial": e.license.commercial, "license": e.license.name}
        if cap is not None:
            m = estimate_memory(name, task=task, dtype=dtype, context=min(context, e.context))
            if m.total > cap:
                continue
            row["memory_bytes"] = m.total
        rows.append(row)
    if as_json:
        return _emit(rows)
    from rich.table import Table

    fmt_count, fmt_bytes = _fmt()
    title = f"{len(rows)} models" + (f" fitting {fits} ({task}, {dtype}, context {context})" if fits else "")
    t = Table(title=title)
    for col in ("model", "family", "released", "params", "context", "commercial", "license") + \
            (("memory",) if cap else ()):
        t.add_column(col, justify="right" if col in ("params", "context", "memory") else "left",
                     no_wrap=col == "model", overflow="fold")
    for r in rows:
        params = fmt_count(r["params"]) + (f" ({fmt_count(r['active_params'])} active)" if r["active_params"] else "")
        t.add_row(r["name"], r["family"], r["released"], params, f"{r['context']:,}", r["commercial"], r["license"],
                  *((fmt_bytes(r["memory_bytes"]),) if cap else ()))
    _console().print(t)


@app.command("show")
def show_cmd(name: str = typer.Argument(..., help="Catalog name, alias or Hugging Face id."), as_json: bool = JsonOpt) -> None:
    """Facts (with sources), architecture and parameter breakdown of one model."""
    from lmzoo import catalog as C
    from lmzoo.catalog.describe import summary

    e = C.get_entry(name)
    n = C.count_params(e.name)
    unsupported = C.unsupported_features(e)
    if as_json:
        d = e.facts()
        d["count"] = {"total": n.total, "active": n.active, "breakdown": n.breakdown}
        d["runnable"] = not unsupported
        d["unsupported"] = unsupported
        return _emit(d)
    from rich.table import Table

    fmt_count, _ = _fmt()
    con = _console()
    t = Table(title=f"{e.name}  ({e.organisation}, {e.released})", show_header=False)
    t.add_column("fact", style="bold")
    t.add_column("value")
    t.add_column("source", style="dim", overflow="fold")
    dev = n.total / e.params - 1
    t.add_row("parameters", f"{fmt_count(e.params)} published ({e.params_label}); {n.total:,} counted ({dev:+.1%})",
              e.source("params"))
    if e.active_params or n.active != n.total:
        t.add_row("active / token", f"{fmt_count(e.active_params)} published; {n.active:,} counted", e.source("params"))
    t.add_row("training tokens", fmt_count(e.tokens) if e.tokens else "not disclosed / n.a.", e.source("tokens"))
    t.add_row("context", f"{e.context:,}", e.source("context"))
    t.add_row("vocabulary", f"{e.vocab_size:,} — {e.tokenizer}", e.source("vocab"))
    t.add_row("objective", e.objective, "")
    if e.base_model:
        t.add_row("base model", e.base_model, e.source("base_model"))
    t.add_row("license", f"{e.license.name} — commercial: {e.license.commercial}"
              + (f" ({e.license.conditions})" if e.license.conditions else ""), e.license.url)
    if e.hf_id:
        t.add_row("weights", f"huggingface.co/{e.hf_id}", "")
    t.add_row("lmzoo runs it", "yes" if not unsupported else "not yet: " + "; ".join(unsupported), "")
    if e.param_exception:
        t.add_row("count vs published", e.param_exception, "")
    for note in e.notes:
        t.add_row("note", note, "")
    con.print(t)
    a = Table(title="architecture", show_header=False)
    a.add_column("", style="bold")
    a.add_column("")
    for k, v in summary(e.arch).items():
        a.add_row(k, v)
    con.print(a)
    _print_breakdown(con, n)


def _print_breakdown(con, n) -> None:
    from rich.table import Table

    fmt_count, _ = _fmt()
    b = Table(title="parameters by component")
    b.add_column("component")
    b.add_column("parameters", justify="right")
    b.add_column("share", justify="right")
    for k, v in n.breakdown.items():
        if v:
            b.add_row(k, f"{v:,}", f"{v / n.total:.1%}")
    b.add_row("total", f"{n.total:,}", fmt_count(n.total), style="bold")
    if n.active != n.total:
        b.add_row("active per token", f"{n.active:,}", fmt_count(n.active), style="bold")
    con.print(b)


@app.command("params")
def params_cmd(name: str = typer.Argument(..., help="Catalog name."), as_json: bool = JsonOpt) -> None:
    """Exact parameter count, by component, computed from the architecture."""
    from lmzoo import catalog as C

    e = C.get_entry(name)
    n = C.count_params(e.name)
    if as_json:
        return _emit({"name": e.name, "total": n.total, "active": n.active, "non_embedding": n.non_embedding,
                      "breakdown": n.breakdown, "published": e.params, "published_label": e.params_label,
                      "deviation": n.total / e.params - 1, "exception": e.param_exception})
    con = _console()
    _print_breakdown(con, n)
    con.print(f"published: {e.params_label} ({e.params:,.0f}); counted / published - 1 = {n.total / e.params - 1:+.2%}"
              + (f"\n[dim]{e.param_exception}[/dim]" if e.param_exception else ""))


@app.command("compare")
def compare_cmd(names: list[str] = typer.Argument(..., help="Two or more catalog names."), as_json: bool = JsonOpt) -> None:
    """Side by side: norm, activation, position encoding, attention sharing, objective, vocab, context,
    parameters, license."""
    from lmzoo import catalog as C
    from lmzoo.catalog.describe import fmt_count, summary

    if len(names) < 2:
        raise ConfigError("compare needs at least two model names")
    entries = [C.get_entry(n) for n in names]
    rows: dict[str, list[str]] = {}
    for e in entries:
        s = summary(e.arch)
        n = C.count_params(e.name)
        vals = {
            "organisation": e.organisation, "released": e.released,
            "parameters": fmt_count(n.total) + (f" ({fmt_count(n.active)} active)" if n.active != n.total else ""),
            "layers x width": f"{s['layers']} x {s['d_model']}", "norm": s["norm"], "activation": s["activation"],
            "position encoding": s["position"], "attention sharing": s["attention"], "residual": s["residual"],
            "MoE": s["moe"], "objective": e.objective, "vocab": f"{s['vocab']} ({e.tokenizer.split(',')[0]})",
            "context": s["context"], "training tokens": fmt_count(e.tokens) if e.tokens else "-",
            "tied embeddings": s["tied embeddings"], "biases": s["biases"],
            "license": f"{e.license.name} (commercial: {e.license.commercial})",
        }
        for k, v in vals.items():
            rows.setdefault(k, []).append(v)
    if as_json:
        return _emit({"models": [e.name for e in entries], "rows": rows})
    from rich.table import Table

    t = Table(title="architecture comparison")
    t.add_column("", style="bold")
    for e in entries:
        t.add_column(e.name, overflow="fold")
    for k, vals in rows.items():
        t.add_row(k, *vals)
    _console().print(t)


@app.command("memory")
def memory_cmd(
    name: str = typer.Argument(..., help="Catalog name."),
    task: str = TaskOpt,
    dtype: str = DtypeOpt,
    context: int | None = ContextOpt,
    batch: int = BatchOpt,
    gpu: str | None = typer.Option(None, "--gpu", help="GPU memory, e.g. 24GB: how many such GPUs it takes."),
    checkpointing: bool = typer.Option(False, "--checkpointing", help="Activation checkpointing (training)."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="LoRA rank (lora / qlora)."),
    plot: Path | None = typer.Option(None, "--plot", help="Write memory vs context per precision to this PNG."),
    as_json: bool = JsonOpt,
) -> None:
    """Peak GPU memory for inference / full fine-tuning / LoRA / QLoRA, broken down."""
    from lmzoo import catalog as C
    from lmzoo.sizing.estimate import estimate_memory, gpus_needed, parse_size

    _check_context(context)
    if plot is not None:
        from lmzoo.tools.plots import check_plot_path

        check_plot_path(plot)
    e = C.get_entry(name)
    cap = parse_size(gpu) if gpu is not None else None
    m = estimate_memory(e.name, task=task, dtype=dtype, context=context, batch=batch,
                        activation_checkpointing=checkpointing, lora_rank=lora_rank)
    n_gpu = gpus_needed(m.total, cap) if cap else None
    path = None
    if plot is not None:
        from lmzoo.tools.plots import memory_vs_context

        dtypes = ("fp32", "bf16") if task == "train" else ("fp32", "bf16", "int8", "int4")
        path = memory_vs_context(e.name, plot, task=task, batch=batch, dtypes=dtypes, gpu_bytes=cap,
                                 activation_checkpointing=checkpointing, lora_rank=lora_rank)
    if as_json:
        d = m.to_dict()
        d.update(name=e.name, gpu_bytes=cap, gpus_needed=n_gpu, plot=str(path) if path else None)
        return _emit(d)
    from rich.table import Table

    _, fmt_bytes = _fmt()
    t = Table(title=f"{e.name}: {m.task}, weights {m.dtype}, batch {m.batch} x context {m.context:,}"
                    + (", checkpointing" if checkpointing else ""))
    t.add_column("term")
    t.add_column("memory", justify="right")
    for k, v in m.breakdown.items():
        t.add_row(k, fmt_bytes(v))
    t.add_row("peak", fmt_bytes(m.total), style="bold")
    con = _console()
    con.print(t)
    for note in m.notes:
        con.print(f"[dim]{note}[/dim]")
    if cap:
        con.print(f"GPUs of {fmt_bytes(cap)}: {n_gpu}" + (" (fits on one)" if n_gpu == 1 else " (split evenly)"))
    if path:
        con.print(f"plot: {path}")


@app.command("fit")
def fit_cmd(
    gpu: str = typer.Option(..., "--gpu", help="GPU memory, e.g. 24GB."),
    family: str | None = typer.Option(None, "--family", "-f"),
    context: int = typer.Option(4096, "--context", "-c", help="Tokens per sequence (capped at each model's)."),
    batch: int = BatchOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Which models fit one GPU, for which task and precision (checkpointing on for training)."""
    from lmzoo import catalog as C
    from lmzoo.sizing.estimate import estimate_memory, parse_size

    _check_context(context)
    cap = parse_size(gpu)
    rows = []
    for name in C.list_models(family=family):
        e = C.get_entry(name)
        fits = {}
        for task, dt in FIT_COMBOS:
            m = estimate_memory(name, task=task, dtype=dt, context=min(context, e.context), batch=batch,
                                activation_checkpointing=task != "infer")
            fits[f"{task}/{dt}" if task in ("infer", "train") else task] = m.total <= cap
        rows.append({"name": name, "fits": fits})
    if as_json:
        return _emit({"gpu_bytes": cap, "context": context, "batch": batch, "models": rows})
    from rich.table import Table

    cols = list(rows[0]["fits"]) if rows else []
    t = Table(title=f"fits one {gpu} GPU? (context {context}, batch {batch}; training with checkpointing)")
    t.add_column("model", no_wrap=True)
    for c in cols:
        t.add_column(c, justify="center")
    for r in rows:
        if any(r["fits"].values()):
            t.add_row(r["name"], *("[green]yes[/green]" if r["fits"][c] else "[red]no[/red]" for c in cols))
    none = [r["name"] for r in rows if not any(r["fits"].values())]
    con = _console()
    con.print(t)
    if none:
        con.print(f"[dim]fit in no setting: {', '.join(none)}[/dim]")


@app.command("hardware")
def hardware_cmd(as_json: bool = JsonOpt) -> None:
    """Seed 000's 7B / 13B / 32B / 70B / 304B hardware table, recomputed next to the seed's figures."""
    from lmzoo.catalog.hardware import hardware_rows, other_claims

    rows = hardware_rows()
    claims = other_claims()
    if as_json:
        return _emit({"seed_000": rows, "seed_001_002": claims})
    from rich.table import Table

    con = _console()
    t = Table(title="seed 000 vs lmzoo: training (GiB; 2K context, batch 1, activation checkpointing)")
    for col in ("size", "model", "seed: train GB", "full FT bf16", "LoRA bf16", "QLoRA 4-bit", "80GB GPUs (full)"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["size"], r["model"], r["seed_train"], *(f"{r[k]:.0f}" for k in ("train", "lora", "qlora")),
                  str(r["gpus80_train"]))
    con.print(t)
    t = Table(title="seed 000 vs lmzoo: inference (GiB; 4K context, batch 1)")
    for col in ("size", "seed: FP16 GB", "bf16", "int8", "int4", "seed: CPU RAM GB", "fp16 weights",
                "seed: GPUs", "80GB GPUs (bf16)"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["size"], r["seed_infer"], *(f"{r[k]:.0f}" for k in ("infer_bf16", "infer_int8", "infer_int4")),
                  r["seed_cpu"], f"{r['weights_fp16']:.0f}", r["seed_gpus"], str(r["gpus80_infer"]))
    con.print(t)
    for r in rows:
        con.print(f"[bold]{r['size']}[/bold]: {r['note']}")
    c = Table(title="other seed claims (inference unless noted) vs lmzoo.sizing.estimate")
    for col in ("model", "seed says", "lmzoo estimate"):
        c.add_column(col, overflow="fold")
    for r in claims:
        c.add_row(r["model"], r["seed"], r["ours"])
    con.print(c)


@app.command("explain")
def explain_cmd(
    what: str = typer.Argument(..., help="glm-mask | glm-positions | masks | alibi | rope"),
    plot: Path | None = typer.Option(None, "--plot", help="Also draw it to this PNG."),
    model: str = typer.Option("Llama-3.1-8B", "--model", "-m", help="Model whose RoPE to show (rope)."),
) -> None:
    """Draw what the seeds describe in words: GLM's blank-infilling mask and 2-D positions, causal /
    prefix / sliding-window masks, ALiBi's bias, RoPE's frequency bands."""
    import difflib

    from lmzoo.tools.plots import EXPLAIN

    if what not in EXPLAIN:
        close = difflib.get_close_matches(what, list(EXPLAIN), n=2, cutoff=0.3)
        raise ConfigError(f"nothing to explain called {what!r}; choose one of {', '.join(EXPLAIN)}"
                          + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    draw, text, _ = EXPLAIN[what]
    print(text(model) if what == "rope" else text())
    if plot is not None:
        out = draw(plot, model) if what == "rope" else draw(plot)
        print(f"plot: {out}")
