"""The ``prunelab`` command line. Every user error ends as one message and exit status 2.

Commands are thin: they parse, call the domain packages (which return records) and print. They are
listed in ``--help`` in the order a newcomer needs them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import sys
import typing
import warnings
from typing import Any

import typer
from typer.core import TyperCommand
from typer.models import CommandInfo, ParameterInfo

import prunelab.ui  # noqa: F401 - its consoles made now follow $COLUMNS at each print, not as met mid-run
from prunelab.cli.options import Command, Group
from prunelab.errors import PrunelabError

# (name, "module:attribute" under prunelab.cli), in the order --help lists them. A command's module is
# imported, and its flags built, only when that command runs or shows its help: the list of commands
# needs only their docstrings, so `prunelab --help` imports neither torch nor the registries.
COMMANDS = [
    ("demo", "experiments:demo"),
    ("run", "experiments:run"),
    ("ls", "experiments:ls"),
    ("show", "experiments:show"),
    ("report", "analysis:report"),
    ("compare", "analysis:compare"),
    ("train", "experiments:train"),
    ("sweep", "sweep:sweep"),
    ("methods", "listings:methods"),
    ("treatments", "listings:treatments"),
    ("controls", "listings:controls"),
    ("models", "listings:models"),
    ("data", "listings:data_app"),
    ("groups", "compress:groups"),
    ("count", "compress:count"),
    ("export", "compress:export"),
    ("shrink", "compress:shrink"),
    ("bench", "compress:bench"),
    ("similarity", "analysis:similarity"),
    ("effective", "analysis:effective"),
    ("stability", "analysis:stability"),
    ("ensemble", "analysis:ensemble_cmd"),
    ("mask-plot", "analysis:mask_plot"),
    ("heads", "analysis:heads"),
    ("sensitivity", "analysis:sensitivity"),
    ("removal-table", "compress:removal_table"),
]


class LazyGroup(Group):
    """The top-level group: builds a command from :data:`COMMANDS` when it is asked for."""

    listing = False  # True while --help lists the commands: their docstrings suffice

    def list_commands(self, ctx) -> list[str]:
        return [name for name, _ in COMMANDS]

    def get_command(self, ctx, name: str):
        if name in self.commands:
            return self.commands[name]
        target = dict(COMMANDS).get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(f"prunelab.cli.{module}"), attr)
        if isinstance(obj, typer.Typer):
            command = typer.main.get_command(obj)
        elif self.listing:
            return Command(name=name, help=inspect.getdoc(obj))
        else:
            command = build_command(name, obj, self.rich_markup_mode)
        self.commands[name] = command
        return command

    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name is not None and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx))
            ctx.fail(f"No such command {name!r}." + (f" Did you mean {close[0]!r}?" if close else ""))
        return super().resolve_command(ctx, args)

    def format_help(self, ctx, formatter) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


def build_command(name: str, fn, markup: Any = "rich") -> TyperCommand:
    """A click command from a command function: its spec flags added (:func:`~prunelab.cli.options.spec_command`),
    help texts given as functions (read from registries) resolved, then typer's conversion."""
    from prunelab.cli.options import with_spec_flags

    flags = getattr(fn, "spec_flags_from", None)
    if flags is not None:
        fn = with_spec_flags(flags())(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    for hint in hints.values():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(info, ParameterInfo) and callable(info.help):
                info.help = info.help()
    fn.__annotations__ = hints  # evaluated once: typer reads these, their help texts resolved
    info = CommandInfo(name=name, callback=fn, cls=Command)
    return typer.main.get_command_from_info(info, pretty_exceptions_short=True, rich_markup_mode=markup)


app = typer.Typer(
    name="prunelab",
    cls=LazyGroup,
    help="Neural-network pruning: lottery tickets, method comparisons, analysis, compression.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    # a callback makes typer build a group (whose commands LazyGroup provides); it takes no options
    pass


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print one line and return 2; no traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any("\0" in str(a) for a in args):  # only possible from code; no path may hold one
        from prunelab.ui import print_error

        print_error("an argument holds a NUL byte, which no name or path may contain")
        return 2
    handler = _UserCodeLines()
    logger = logging.getLogger("prunelab")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not an assignment: it clears the loggers' level caches
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
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return 0


class _UserCodeLines(logging.Handler):
    """prunelab's INFO lines (what is being built before a user's code runs) as dim lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        from prunelab.ui import note

        note(self.format(record))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings (a changed model file, an uncached image folder) as one plain line."""
    from prunelab.ui import warn

    warn(f"warning: {message}")


def entry() -> None:
    sys.exit(main())
