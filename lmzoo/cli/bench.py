"""`lmzoo bench`: side-by-side speed measurement (arguments as in lmzoo/bench.py)."""

from __future__ import annotations

import typer

from lmzoo.cli import app


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Prefill/decode tokens/s, time to first token, peak memory: lmzoo vs transformers vs litgpt."""
    from lmzoo.tools.bench import main

    raise typer.Exit(main(list(ctx.args)))
