"""Terminal output: progress bars and tables (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
from rich.table import Table
from rich.text import Text

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


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    t = Table(title=plain(title) if title else None, title_justify="left")
    for i, col in enumerate(columns):
        numeric = all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        short = all(len(fmt(row[i])) <= 24 for row in rows)
        t.add_column(plain(col), justify="right" if numeric and rows else "left", no_wrap=short)
    for row in rows:
        t.add_row(*[plain(fmt(v)) for v in row])
    return t


def plain(text: str) -> Text:
    """Text shown as written: names such as 'run [3fa2]' are not read as rich markup."""
    return Text(str(text))


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_error(message: str) -> None:
    """One plain error line on stderr (the message is not parsed as markup)."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
