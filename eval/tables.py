"""GitHub-Markdown tables from DataFrames (pandas' own ``to_markdown`` needs the optional ``tabulate``)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def format_cell(value: Any, digits: int = 2) -> str:
    """Numbers with ``digits`` decimals, missing values as an empty cell, anything else as ``str``."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 2, index: bool = True) -> str:
    """The frame as a Markdown table; the index becomes the first column when ``index`` is true."""
    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    align = (["---"] if index else []) + ["---:"] * len(frame.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for name, row in frame.iterrows():
        cells = ([str(name)] if index else []) + [format_cell(v, digits) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
