"""Terminal output: progress bars, tables and errors (rich). Only the CLI prints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.cells import cell_len
from rich.console import Console, Group
from rich.padding import Padding
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


#: Columns a rich table spends besides its cells: a border before each column and after the last,
#: and one space of padding on each side of each cell.
_BORDER, _PER_COLUMN = 1, 3


def render(table: Table, width: int | None = None) -> RichTable | Group:
    """A :class:`~prunelab.table.Table` for the terminal, ``width`` columns wide (default: the
    console's): numbers right-aligned, text as written. A cell wraps at spaces, never inside a word
    (a flag, a layer name can be copied whole); when the longest words of the columns do not fit
    side by side, each row is shown as a block of ``column: value`` lines instead."""
    width = console.width if width is None else width
    cells = [table.headers(), *table.formatted()]
    longest = [
        max(cell_len(line) for row in cells for line in row[i].splitlines() or [""])
        for i in range(len(cells[0]))
    ]
    words = [max(cell_len(w) for row in cells for w in row[i].split() or [""]) for i in range(len(cells[0]))]
    room = width - _BORDER - _PER_COLUMN * len(longest)
    if sum(words) > room:
        return _stacked(table)
    widths = _share(words, longest, room)
    t = RichTable(title=plain(table.title) if table.title else None, title_justify="left")
    for i, header in enumerate(table.headers()):
        numeric = bool(table.rows) and all(
            isinstance(r[i], int | float | tuple) or r[i] is None for r in table.rows
        )
        t.add_column(plain(header), justify="right" if numeric else "left", width=widths[i], overflow="fold")
    for row in table.formatted():
        t.add_row(*map(plain, row))
    return t


def _share(least: list[int], most: list[int], room: int) -> list[int]:
    """Column widths within ``room``: each column at most ``most`` (its cells on one line) and at least
    ``least`` (its longest word); the widest columns give way first, down to a common cap, so that
    short columns keep their cells whole."""
    if sum(most) <= room:
        return most
    low, high = 0, max(most)
    while low < high:  # the largest cap that fits
        cap = (low + high + 1) // 2
        if sum(max(w, min(m, cap)) for w, m in zip(least, most, strict=True)) <= room:
            low = cap
        else:
            high = cap - 1
    widths = [max(w, min(m, low)) for w, m in zip(least, most, strict=True)]
    for i in sorted(range(len(widths)), key=lambda i: most[i] - widths[i]):
        if sum(widths) < room and widths[i] < most[i]:
            widths[i] += 1  # what the cap's rounding left: first to the columns nearest to one line
    return widths


def _stacked(table: Table) -> Group:
    """A table too wide for the terminal: each row as its first cell, then ``column: value`` lines."""
    parts: list = [plain(table.title)] if table.title else []
    headers = table.headers()
    for row in table.formatted():
        parts.append(Text(row[0], style="bold"))
        for header, cell in zip(headers[1:], row[1:], strict=True):
            parts.append(Padding(Text.assemble((f"{header}: ", "dim"), cell), (0, 0, 0, 4), expand=False))
    return Group(*parts)


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


def note(message: str) -> None:
    """One plain line on stderr, dimmed: what is happening (a user's code about to run)."""
    err_console.print(Text(message, style="dim"), soft_wrap=True)


def warn(message: str) -> None:
    """One plain warning line on stderr."""
    err_console.print(Text(message, style="yellow"), soft_wrap=True)
