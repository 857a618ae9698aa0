"""RULER tables: per task and length scores, the average over tasks per length, the overall mean.

As in RULER (``scripts/eval/evaluate.py`` and the README tables): a task's score at a length is the
mean per-sample string match x100 rounded to two places; a length's score is the mean of its task
scores; the headline is the mean over tasks and lengths.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.benchmarks.ruler.tasks import ALL_TASKS, TASKS
from eval.frames import write_frame
from eval.metrics.ruler import postprocess_pred


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_table(
    records: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], dict[str, float]]
) -> dict[str, Any]:
    """``scores.json`` content from scored records (``score`` maps a record to its metrics).

    Returns
    -------
    dict
        ``score`` (mean over task x length cells), ``per_length`` (mean over tasks), ``per_task``
        (``by_length`` scores, their mean, metric, sample and empty-prediction counts) and ``table``.
    """
    if not records:
        return {"score": float("nan"), "headline_metric": "score", "num_samples": 0, "per_task": {}}
    cells: dict[tuple[str, int], list[float]] = defaultdict(list)
    nulls: dict[tuple[str, int], int] = defaultdict(int)
    for r in records:
        cell = (r["task"], int(r["meta"]["length"]))
        cells[cell].append(score(r)["score"])
        nulls[cell] += not postprocess_pred(r["prediction"])
    order = {t: i for i, t in enumerate(ALL_TASKS)}
    tasks = sorted({t for t, _ in cells}, key=lambda t: order.get(t, len(order)))
    lengths = sorted({n for _, n in cells})
    table = {t: {str(n): round(_mean(cells[(t, n)]), 2) for n in lengths if (t, n) in cells} for t in tasks}
    per_length = {
        str(n): round(_mean([table[t][str(n)] for t in tasks if str(n) in table[t]]), 2) for n in lengths
    }
    per_task = {
        t: {
            "metric": TASKS[t].metric if t in TASKS else "unknown",
            "num_samples": sum(len(cells[(t, n)]) for n in lengths if (t, n) in cells),
            "score": round(_mean(list(table[t].values())), 2),
            "by_length": table[t],
            "nulls": {str(n): f"{nulls[(t, n)]}/{len(cells[(t, n)])}" for n in lengths if (t, n) in cells},
        }
        for t in tasks
    }
    all_cells = [v for row in table.values() for v in row.values()]
    return {
        "score": round(_mean(all_cells), 2),
        "headline_metric": "score",
        "num_samples": len(records),
        "lengths": lengths,
        "tasks": tasks,
        "per_length": per_length,
        "per_task": per_task,
    }


def table_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """Tasks x lengths with an ``avg`` column and an ``average`` row (the RULER README layout)."""
    lengths = [str(n) for n in summary["lengths"]]
    rows = {
        t: [info["by_length"].get(n, float("nan")) for n in lengths]
        for t, info in summary["per_task"].items()
    }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=lengths)
    frame["avg"] = [summary["per_task"][t]["score"] for t in frame.index]
    frame.loc["average"] = [summary["per_length"][n] for n in lengths] + [summary["score"]]
    frame.index.name = "task"
    return frame


def write_tables(summary: dict[str, Any], run_dir: Path) -> list[Path]:
    """Write ``ruler_scores.csv`` and ``ruler_scores.md`` into ``run_dir``; return their paths."""
    return write_frame(table_frame(summary), Path(run_dir) / "ruler_scores", digits=2)
