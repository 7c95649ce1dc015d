"""Plain-text tables (Markdown pipe tables)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["markdown_table", "percent"]


def percent(value: float | None, digits: int = 2) -> str:
    """0.9123 -> '91.23' (a blank for None)."""
    return "" if value is None else f"{100.0 * value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
