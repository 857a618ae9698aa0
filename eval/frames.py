"""Pandas frames as files: CSV with ``#`` provenance lines and GitHub Markdown tables.

The one frame writer of the project, below everything that writes tables: the benchmarks' own
run-folder tables (RULER, InfiniteBench, LongBench) and the results layer (:mod:`eval.tables`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def format_cell(value: Any, digits: int = 2) -> str:
    """Numbers with ``digits`` decimals, missing values as an empty cell, anything else as ``str``."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    frame: pd.DataFrame, digits: int = 2, index: bool = True, na: str = "", left: int = 0
) -> str:
    """The frame as a Markdown table; the index becomes the first column when ``index`` is true.

    The index and the first ``left`` columns (labels) are left-aligned, the others right-aligned.
    """
    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    left = left + (1 if index else 0)
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for name, *row in frame.itertuples(name=None):  # itertuples keeps each column's dtype
        cells = ([str(name)] if index else []) + [format_cell(v, digits) or na for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_frame(
    frame: pd.DataFrame,
    stem: Path,
    *,
    digits: int = 2,
    index: bool = True,
    header: Sequence[str] = (),
    markdown: pd.DataFrame | None = None,
    na: str = "",
    float_format: str | None = None,
    left: int = 0,
) -> list[Path]:
    """Write ``<stem>.csv`` and ``<stem>.md``; return their paths.

    Parameters
    ----------
    frame : DataFrame
        The CSV content.
    header : sequence of str
        Provenance lines: ``# line`` comments atop the CSV (read back with :func:`read_table`) and a
        paragraph above the Markdown table.
    markdown : DataFrame, optional
        What the Markdown shows when it differs from the CSV (pre-formatted cells, fewer columns).
    na : str
        Markdown text of a missing value.
    float_format : str, optional
        CSV float format; default ``%.{digits}f``.
    left : int
        Leading label columns left-aligned in the Markdown.
    """
    stem = Path(stem)
    csv_path, md_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".md")
    write_csv(frame, csv_path, index=index, header=header, float_format=float_format or f"%.{digits}f")
    text = markdown_table(
        frame if markdown is None else markdown, digits=digits, index=index, na=na, left=left
    )
    preface = "".join(f"{line}  \n" for line in header[1:])
    title = f"## {header[0]}\n\n" if header else ""
    md_path.write_text(title + (preface + "\n" if preface else "") + text, encoding="utf-8")
    return [csv_path, md_path]


def write_csv(
    frame: pd.DataFrame,
    path: Path,
    *,
    index: bool = False,
    header: Sequence[str] = (),
    float_format: str = "%.6g",
) -> Path:
    """The frame as CSV, ``# line`` provenance comments first, ``\\n`` line ends on every platform."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header)
    body = frame.to_csv(index=index, float_format=float_format, lineterminator="\n")
    path.write_text(comments + body, encoding="utf-8")
    return path


def read_table(path: Path) -> pd.DataFrame:
    """A CSV written by :func:`write_frame` (its ``#`` header lines skipped)."""
    return pd.read_csv(path, comment="#")


def read_header(path: Path) -> list[str]:
    """The ``#`` provenance lines of a CSV written by :func:`write_frame`."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("# "):
            break
        lines.append(line[2:])
    return lines
