"""Per-task InfiniteBench results: the scores.json content and the CSV / Markdown task table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.benchmarks.infinitebench.tasks import ALL_TASKS
from eval.frames import write_frame


def task_table(records: Sequence[dict[str, Any]], headline: str = "score") -> pd.DataFrame:
    """One row per task present: ``task``, ``num_samples``, ``score`` (percent, upstream's unit).

    Tasks keep upstream's ALL_TASKS order; the score is the mean per-sample score times 100.
    """
    rows = []
    present = {r["task"] for r in records}
    order = [t for t in ALL_TASKS if t in present] + sorted(present - set(ALL_TASKS))
    for task in order:
        values = [r["scores"][headline] for r in records if r["task"] == task]
        rows.append({"task": task, "num_samples": len(values), "score": 100.0 * sum(values) / len(values)})
    return pd.DataFrame(rows, columns=["task", "num_samples", "score"])


def summarise(records: Sequence[dict[str, Any]], headline: str = "score") -> dict[str, Any]:
    """scores.json content: ``score`` is the unweighted mean of the task scores (percent)."""
    table = task_table(records, headline)
    per_task = {
        row.task: {"num_samples": int(row.num_samples), "score": float(row.score)}
        for row in table.itertuples()
    }
    score = float(table["score"].mean()) if len(table) else float("nan")
    return {
        "score": score,
        "headline_metric": headline,
        "average": "mean over tasks",
        "num_samples": len(records),
        "per_task": per_task,
    }


def display_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The task table plus an ``average`` row (sample total, mean of task scores), task first."""
    frame = table.set_index("task")[["num_samples", "score"]].rename(
        columns={"num_samples": "samples", "score": "score (%)"}
    )
    if len(table):
        frame.loc["**average**"] = [int(table["num_samples"].sum()), table["score"].mean()]
    frame["samples"] = frame["samples"].astype(int)
    return frame.reset_index()


def write_tables(run_dir: Path, records: Sequence[dict[str, Any]], headline: str = "score") -> list[Path]:
    """Write ``infinitebench_tasks.csv`` and ``infinitebench_tasks.md`` into ``run_dir``."""
    if not records:
        return []
    table = task_table(records, headline)
    stem = Path(run_dir) / "infinitebench_tasks"
    return write_frame(table, stem, index=False, float_format="%.4f", markdown=display_frame(table), left=1)
