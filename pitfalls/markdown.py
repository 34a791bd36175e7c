"""The one Markdown table writer: comparison tables, the reproduction, the plan, the probes and
the norm support table all print through `table`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """`| a | b |` lines: the header, a `|---|` rule, one line per row; ends with a newline."""
    lines = [_row(header), "|" + "---|" * len(header)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"
