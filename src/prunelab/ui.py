"""Terminal output: progress bars, tables and errors (rich). Only the CLI prints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as RichTable
from rich.text import Text

from prunelab.table import Table

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield an ``update(done, total)`` callback drawing one bar (a no-op when disabled)."""
    if not enabled:
        yield lambda done, total: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, refresh_per_second=4) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def render(table: Table) -> RichTable:
    """A :class:`~prunelab.table.Table` for the terminal: numbers right-aligned, text as written."""
    t = RichTable(title=plain(table.title) if table.title else None, title_justify="left")
    for i, header in enumerate(table.headers()):
        numeric = bool(table.rows) and all(
            isinstance(r[i], int | float | tuple) or r[i] is None for r in table.rows
        )
        # long names (a transformer's layers) wrap instead of losing their ends to an ellipsis
        t.add_column(
            plain(header), justify="right" if numeric else "left", overflow="ellipsis" if numeric else "fold"
        )
    for row in table.formatted():
        t.add_row(*map(plain, row))
    return t


def show(table: Table) -> None:
    """Print a table, and its note under it."""
    console.print(render(table))
    if table.note:
        console.print(plain(table.note), style="dim")


def plain(text: str) -> Text:
    """Text shown as written: names such as 'run [3fa2]' are not read as rich markup."""
    return Text(str(text))


def print_error(message: str) -> None:
    """One plain error line on stderr (the message is not parsed as markup)."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def warn(message: str) -> None:
    """One plain warning line on stderr."""
    err_console.print(Text(message, style="yellow"), soft_wrap=True)
