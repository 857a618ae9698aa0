"""LongBench aggregation (scores.json content) and the tables written into a run folder.

Numbers follow ``LongBench/eval.py``: a task's score is ``round(100 * mean of sample scores, 2)``.
Averages are taken over those rounded task scores, as a reader of upstream ``result.json`` would:
a category is the mean of its tasks, a language's "Avg" the mean of its six categories (README
leaderboard; the code category belongs to both tables), and the KV-compression papers' number is
the mean of the 16 English and code tasks. LongBench-E puts each sample in a bucket by its
``length`` field (``<4000``, ``<8000``, else), as ``scorer_e``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.benchmarks.longbench_tasks import (
    ALL_TASKS,
    CATEGORIES,
    PAPER_TASKS,
    TASK_CATEGORY,
    task_language,
    tasks_of_language,
)
from eval.frames import write_frame
from eval.metrics.longbench import task_score

BUCKETS: tuple[str, ...] = ("0-4k", "4-8k", "8k+")


def length_bucket(length: float) -> str:
    """LongBench-E's bucket of a record ``length`` (words, or characters for Chinese)."""
    if length < 4000:
        return "0-4k"
    if length < 8000:
        return "4-8k"
    return "8k+"


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def _sample_scores(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped by task, tasks in LongBench order (unknown tasks last, sorted)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(record["task"], []).append(record)
    order = {task: i for i, task in enumerate(ALL_TASKS)}
    return {t: groups[t] for t in sorted(groups, key=lambda t: (order.get(t, len(order)), t))}


def aggregate_longbench(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """scores.json content for LongBench v1.

    Returns
    -------
    dict
        ``score`` (mean of the run tasks' scores), ``per_task`` ({task: {score, num_samples}}),
        ``per_category`` ({"en"|"zh": {category: mean}} over run tasks), ``language_avg``
        ({"en"|"zh": mean of six categories, None unless all that language's tasks ran}),
        ``avg_16`` (papers' 16-task mean, None unless all 16 ran) and ``avg_16_missing``.
    """
    groups = _sample_scores(records)
    per_task = {
        task: {"score": task_score([r["scores"]["score"] for r in rs]), "num_samples": len(rs)}
        for task, rs in groups.items()
    }
    scores = {task: entry["score"] for task, entry in per_task.items()}

    per_category: dict[str, dict[str, float]] = {}
    language_avg: dict[str, float | None] = {}
    for language in ("en", "zh"):
        if not any(task_language(t) == language for t in scores):
            language_avg[language] = None  # code tasks alone do not open a language's table
            continue
        cats = {}
        for category, members in CATEGORIES.items():
            ran = [scores[t] for t in members if t in scores and task_language(t) in (language, "code")]
            if ran:
                cats[category] = _mean(ran)
        if cats:
            per_category[language] = cats
        complete = all(t in scores for t in tasks_of_language(language))
        language_avg[language] = _mean(list(cats.values())) if complete else None

    missing16 = [t for t in PAPER_TASKS if t not in scores]
    return {
        "score": _mean(list(scores.values())) if scores else math.nan,
        "headline_metric": "score",
        "num_samples": len(records),
        "tasks": list(scores),
        "per_task": per_task,
        "per_category": per_category,
        "language_avg": language_avg,
        "avg_16": None if missing16 else _mean([scores[t] for t in PAPER_TASKS]),
        "avg_16_missing": missing16,
    }


def aggregate_longbench_e(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """scores.json content for LongBench-E.

    Returns
    -------
    dict
        ``per_task`` ({task: {score, num_samples, "0-4k", "4-8k", "8k+", bucket_counts}}, a bucket
        without samples is None where upstream prints NaN), ``per_bucket`` (mean over tasks of each
        bucket) and ``score`` (mean over tasks of the all-length task score).
    """
    per_task: dict[str, dict[str, Any]] = {}
    for task, rs in _sample_scores(records).items():
        by_bucket: dict[str, list[float]] = {b: [] for b in BUCKETS}
        for r in rs:
            length = (r.get("meta") or {}).get("length")
            if length is not None:
                by_bucket[length_bucket(length)].append(r["scores"]["score"])
        entry: dict[str, Any] = {
            "score": task_score([r["scores"]["score"] for r in rs]),
            "num_samples": len(rs),
        }
        for bucket, values in by_bucket.items():
            entry[bucket] = task_score(values) if values else None
        entry["bucket_counts"] = {b: len(v) for b, v in by_bucket.items()}
        per_task[task] = entry
    per_bucket = {b: _mean([e[b] for e in per_task.values() if e[b] is not None]) for b in BUCKETS}
    return {
        "score": _mean([e["score"] for e in per_task.values()]) if per_task else math.nan,
        "headline_metric": "score",
        "num_samples": len(records),
        "tasks": list(per_task),
        "per_task": per_task,
        "per_bucket": per_bucket,
    }


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_table(run_dir: Path, stem: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` (a GitHub table); empty cells (``n/a`` in Markdown) for missing values."""
    frame = pd.DataFrame([[_fmt(v) for v in row] for row in rows], columns=list(header))
    return write_frame(frame, run_dir / stem, index=False, na="n/a", left=1)


def write_longbench_tables(run_dir: Path, scores: dict[str, Any]) -> list[Path]:
    """``longbench_tasks.{csv,md}`` (one row per task) and ``longbench_averages.{csv,md}``."""
    task_rows = [
        [task, task_language(task), TASK_CATEGORY.get(task, ""), e["num_samples"], e["score"]]
        for task, e in scores["per_task"].items()
    ]
    paths = write_table(
        run_dir, "longbench_tasks", ["task", "language", "category", "samples", "score"], task_rows
    )
    per_task = scores["per_task"]
    avg_rows: list[list[Any]] = []
    for language, cats in scores["per_category"].items():
        for category, value in cats.items():
            n = sum(
                1 for t in CATEGORIES[category] if t in per_task and task_language(t) in (language, "code")
            )
            avg_rows.append([f"{language}: {category}", n, value])
    for language, value in scores["language_avg"].items():
        if value is not None:
            avg_rows.append(
                [f"{language}: Avg (6 categories, LongBench README)", len(tasks_of_language(language)), value]
            )
    if scores["avg_16"] is not None:
        avg_rows.append(["Avg of the 16 English + code tasks (papers)", len(PAPER_TASKS), scores["avg_16"]])
    avg_rows.append(["Avg of the tasks run", len(per_task), scores["score"]])
    return paths + write_table(run_dir, "longbench_averages", ["average", "tasks", "score"], avg_rows)


def write_longbench_e_tables(run_dir: Path, scores: dict[str, Any]) -> list[Path]:
    """``longbench_e_buckets.{csv,md}``: task rows, bucket columns, and an average row."""
    header = ["task", "samples", *BUCKETS, "all"]
    rows = [
        [task, e["num_samples"], *(e[b] for b in BUCKETS), e["score"]]
        for task, e in scores["per_task"].items()
    ]
    rows.append(["Avg", scores["num_samples"], *(scores["per_bucket"][b] for b in BUCKETS), scores["score"]])
    return write_table(run_dir, "longbench_e_buckets", header, rows)
