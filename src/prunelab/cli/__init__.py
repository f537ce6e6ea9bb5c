"""The ``prunelab`` command line. Every user error ends as one message and exit status 2.

Commands are thin: they parse, call the domain packages (which return records) and print. They are
listed in ``--help`` in the order a newcomer needs them.
"""

from __future__ import annotations

import sys
import warnings

import typer

from prunelab.cli import analysis, compress, experiments, listings, sweep
from prunelab.errors import PrunelabError

app = typer.Typer(
    name="prunelab",
    help="Neural-network pruning: lottery tickets, method comparisons, analysis, compression.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# (name, function), in the order --help lists them
COMMANDS = [
    ("demo", experiments.demo),
    ("run", experiments.run),
    ("ls", experiments.ls),
    ("show", experiments.show),
    ("report", analysis.report),
    ("compare", analysis.compare),
    ("train", experiments.train),
    ("sweep", sweep.sweep),
    ("methods", listings.methods),
    ("treatments", listings.treatments),
    ("controls", listings.controls),
    ("models", listings.models),
    ("count", compress.count),
    ("export", compress.export),
    ("shrink", compress.shrink),
    ("bench", compress.bench),
    ("similarity", analysis.similarity),
    ("effective", analysis.effective),
    ("stability", analysis.stability),
    ("ensemble", analysis.ensemble_cmd),
    ("mask-plot", analysis.mask_plot),
    ("heads", analysis.heads),
    ("sensitivity", analysis.sensitivity),
    ("removal-table", compress.removal_table),
]
for _name, _fn in COMMANDS:
    app.command(_name)(_fn)
    if _name == "models":
        app.add_typer(listings.data_app, name="data")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one line and return 2; no traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any("\0" in str(a) for a in args):  # only possible from code; no path may hold one
        from prunelab.ui import print_error

        print_error("an argument holds a NUL byte, which no name or path may contain")
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            app(args=args, prog_name="prunelab")
    except SystemExit as exc:  # typer exits on success, on --help and on usage errors (status 2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except PrunelabError as exc:
        from prunelab.ui import print_error

        print_error(str(exc))
        return 2
    except OSError as exc:  # the environment: a path too long, a folder that is a file, ...
        if exc.errno is None:
            raise
        from prunelab.io import os_reason
        from prunelab.ui import print_error

        where = exc.filename if exc.filename is not None else "a file"
        shown = str(where) if len(str(where)) <= 200 else str(where)[:197] + "..."
        print_error(f"{shown}: {os_reason(exc)}")
        return 2
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (a changed model file, an uncached image folder) as one plain line."""
    from prunelab.ui import warn

    warn(f"warning: {message}")


def entry() -> None:
    sys.exit(main())
