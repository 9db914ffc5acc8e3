"""What a benchmark prints on the console: plain-text tables and its targets' verdicts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["grid", "verdict_lines"]


def grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A right-aligned table, its header underlined with dashes."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
             for row in [header, *rows]]  # fmt: skip
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def verdict_lines(verdicts: Iterable[dict[str, Any]]) -> list[str]:
    """``target LABEL: CHECK: yes|NO``, one per verdict of a results document."""
    return [
        f"target {verdict['label']}: {verdict['check']}: " + ("yes" if verdict["met"] else "NO")
        for verdict in verdicts
    ]
