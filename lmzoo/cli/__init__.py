"""`lmzoo` command line: one Typer app; each topic module registers its subcommands on `app`.

User mistakes raise `LmzooError`; `main` prints them as one line on stderr and exits with 2. The
machine running out of memory or disk is one line and exit 1.
"""

from __future__ import annotations

import sys

import typer

from lmzoo.errors import LmzooError, ResourceError, resource_error

app = typer.Typer(
    name="lmzoo",
    help="Run, size and compare the mainstream open LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    # topic modules add their commands to `app` on import
    from lmzoo.cli import bench, convert, run, serve, train, vocab, zoo  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except ResourceError as e:
        print(f"lmzoo: error: {e}", file=sys.stderr)
        sys.exit(1)
    except LmzooError as e:
        print(f"lmzoo: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (MemoryError, RuntimeError, OSError, ImportError) as e:  # the machine ran out of memory or disk: exit 1
        r = resource_error(e)
        if r is None:
            raise
        print(f"lmzoo: error: {r}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
