"""A table as a record: raw values in rows, formatted on display, written as CSV or HTML.

Every table prunelab shows is one of these, so the terminal (``prunelab.ui.show``), the HTML report
and the CSV files render the same values the same way. Domain code returns tables; only the CLI
prints them.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled grid of values: raw numbers in ``rows`` (for CSV), formatted on display."""

    title: str
    columns: list[str]
    rows: list[list[object]]
    note: str = ""
    formats: dict[str, str] = field(
        default_factory=dict
    )  # "pct", "int", "f1", "pm"/"pmf" (mean ± std: %/plain)

    def cell(self, column: str, value: object) -> str:
        kind = self.formats.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if kind == "pct" and isinstance(value, float):
            return f"{value:.2%}"
        if kind == "int" and isinstance(value, int | float):
            return f"{value:,.0f}"
        if kind == "f1" and isinstance(value, int | float):
            return f"{value:,.1f}"
        if kind == "pm" and isinstance(value, tuple):
            return f"{value[0]:.2%} ± {value[1]:.2%}" if value[1] else f"{value[0]:.2%}"
        if kind == "pmf" and isinstance(value, tuple):
            return f"{value[0]:.4f} ± {value[1]:.4f}" if value[1] else f"{value[0]:.4f}"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    def formatted(self) -> list[list[str]]:
        return [[self.cell(c, v) for c, v in zip(self.columns, row, strict=True)] for row in self.rows]

    def to_csv(self) -> str:
        """Raw values; a (mean, std) pair becomes two columns."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        header = []
        for c in self.columns:
            header += [c, f"{c} std"] if self.formats.get(c) in ("pm", "pmf") else [c]
        writer.writerow(header)
        for row in self.rows:
            out: list[object] = []
            for c, v in zip(self.columns, row, strict=True):
                if self.formats.get(c) in ("pm", "pmf"):
                    out += list(v) if isinstance(v, tuple) else [v, None]
                else:
                    out.append(v)
            writer.writerow(["" if v is None else v for v in out])
        return buf.getvalue()

    def headers(self) -> list[str]:
        return [c.replace("_", " ") for c in self.columns]

    def to_html(self, table_id: str = "") -> str:
        ident = f' id="{html.escape(table_id)}"' if table_id else ""
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.headers())
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="{"num" if isinstance(raw, int | float | tuple) else "txt"}">{html.escape(text)}</td>'
                for raw, text in zip(row, shown, strict=True)
            )
            + "</tr>"
            for row, shown in zip(self.rows, self.formatted(), strict=True)
        )
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        return (
            f"<table{ident}><caption>{html.escape(self.title)}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"
        )


def records_table(title: str, rows: Sequence[dict], columns: Sequence[str] | None = None, **kw) -> Table:
    """A table from records (dicts), columns in the order given or first seen."""
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    return Table(title, cols, [[r.get(c) for c in cols] for r in rows], **kw)
