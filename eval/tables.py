"""The results tables: per benchmark and across benchmarks, from run folders (files via :mod:`eval.frames`).

Two kinds of tables are built here from run folders (see :mod:`eval.collect`):

* per benchmark: one row per (budget, method) with a column per task and the benchmark average,
  95% bootstrap intervals over samples (CSV), the full cache repeated at every budget, and the best
  compressed method per budget and column marked (``**bold**`` in Markdown), lower-is-better metrics
  ranked as such;
* a summary across benchmarks: per (budget, method) each benchmark's average, their mean (higher-is-
  better benchmarks, in percent) and the mean rank among the compressed methods.

:func:`build_result_tables` computes them (with their bootstrap intervals) once per report;
:mod:`eval.plots` and :mod:`eval.claims` read the same :class:`ResultTables`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.collect import (
    AGNOSTIC,
    FULL_METHOD,
    RATIO_SUFFIX,
    RATIO_UNIT,
    Run,
    RunSource,
    as_runs,
    kept_mean,
    split_bench,
)
from eval.frames import format_cell, write_csv, write_frame
from eval.method_configs import display_order
from eval.stats import bootstrap_ci

METHOD_ORDER = tuple(display_order())  # from configs/method/: a new method appears without edits here
AVERAGE = "average"


# ------------------------------------------------------------------------------- sample values
def _percent_scale(sample_mean: float, reported: float) -> float:
    """For a percent benchmark: 100 when its per-sample values are fractions, 1 when already percent.

    Percent benchmarks differ here (InfiniteBench and LongBench score samples in fractions, RULER
    in percent), so the scale is the one that brings the samples' mean to the reported task score.
    """
    return 100.0 if abs(100.0 * sample_mean - reported) < abs(sample_mean - reported) else 1.0


def sample_values(run: Run) -> dict[str, dict[str, float]]:
    """Headline value per task and sample id, in the unit of the run's scores.json.

    Returns
    -------
    dict
        ``{task: {sample id: value}}``; records without the headline metric are skipped.
    """
    raw: dict[str, dict[str, float]] = {}
    for record in run.records:
        value = (record.get("scores") or {}).get(run.headline)
        if isinstance(value, (int, float)) and not math.isnan(value):
            raw.setdefault(record["task"], {})[record["id"]] = float(value)
    reported = run.task_scores()
    out = {}
    for task, values in raw.items():
        mean = sum(values.values()) / len(values)
        percent = run.unit == "percent" and task in reported  # a fraction benchmark's samples are as reported
        scale = _percent_scale(mean, reported[task]) if percent else 1.0
        out[task] = {i: scale * v for i, v in values.items()}
    return out


def average_weights(per_task: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-sample values rescaled so that their plain mean equals the mean of the task means.

    With ``T`` tasks, ``N`` samples and ``n_t`` in task ``t``, sample ``i`` of task ``t`` becomes
    ``x_i * N / (T * n_t)``: resampling these values bootstraps the benchmark average (an
    unweighted mean over tasks) even when tasks have different sample counts.
    """
    total = sum(len(v) for v in per_task.values())
    tasks = len(per_task)
    return {
        t: {i: x * total / (tasks * len(values)) for i, x in values.items()} for t, values in per_task.items()
    }


# -------------------------------------------------------------------------------- bench tables
@dataclass
class BenchTable:
    """One benchmark's methods x budgets table.

    Attributes
    ----------
    frame : DataFrame
        Rows (budget, method); columns ``budget``, ``method``, ``num_samples``, per column ``c`` of
        :attr:`columns` the value ``c`` and its interval ``c_low``, ``c_high``; ``best_average``;
        ``run`` (folder name).
    columns : list of str
        Task columns followed by ``average``.
    """

    model: str
    bench: str
    metric: str
    lower_is_better: bool
    columns: list[str]
    frame: pd.DataFrame
    header: list[str] = field(default_factory=list)
    unit: str = ""


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def _row(run: Run, budget: int | None, columns: list[str]) -> dict[str, Any]:
    per_task = sample_values(run)
    reported = run.task_scores()
    row: dict[str, Any] = {"budget": budget, "method": run.method, "num_samples": run.num_samples}
    for task in columns[:-1]:
        mean, low, high = bootstrap_ci(list(per_task.get(task, {}).values()))
        row[task] = reported.get(task, mean)
        row[f"{task}_low"], row[f"{task}_high"] = low, high
    weighted = [x for values in average_weights(per_task).values() for x in values.values()]
    mean, low, high = bootstrap_ci(weighted)
    score = run.scores.get("score")
    row[AVERAGE] = float(score) if isinstance(score, (int, float)) else mean
    row[f"{AVERAGE}_low"], row[f"{AVERAGE}_high"] = low, high
    row["run"] = run.path.name
    return row


def best_mask(frame: pd.DataFrame, column: str, lower_is_better: bool) -> pd.Series:
    """True where a compressed method has the best ``column`` value among compressed methods at its budget."""
    mask = pd.Series(False, index=frame.index)
    compressed = frame[frame["method"] != FULL_METHOD]
    for _, part in compressed.groupby("budget", dropna=False):
        values = part[column].dropna()
        if values.empty:
            continue
        best = values.min() if lower_is_better else values.max()
        mask.loc[values.index[np.isclose(values.to_numpy(), best, rtol=0, atol=1e-12)]] = True
    return mask


def _provenance(runs: Sequence[Run], profile: str | None, counts: str) -> list[str]:
    commits = sorted({c for c in (r.commit for r in runs) if c})
    models = sorted({r.model for r in runs})
    return [
        f"model: {', '.join(models)}",
        f"profile: {profile or 'ad hoc (not a sweep profile)'}",
        f"samples per run: {counts}",
        f"git commit: {', '.join(commits) if commits else 'unknown'}",
        f"runs: {len(runs)}",
    ]


def _sample_counts(runs: Sequence[Run]) -> str:
    """``task n`` (or ``task min-max`` when runs differ), joined by commas."""
    counts: dict[str, list[int]] = {}
    for run in runs:
        for task, n in run.task_counts().items():
            counts.setdefault(task, []).append(n)
    parts = []
    for task, ns in counts.items():
        lo, hi = min(ns), max(ns)
        parts.append(f"{task} {lo}" if lo == hi else f"{task} {lo}-{hi}")
    return ", ".join(parts) or "0"


def _is_percent(runs: Sequence[Run]) -> bool:
    """The benchmark reports percent: its runs' declared unit (:attr:`eval.collect.Run.unit`)."""
    return any(r.unit == "percent" for r in runs)


def bench_table(runs: Sequence[Run], profile: str | None = None) -> BenchTable:
    """Methods x budgets table of one (model, benchmark); the full cache repeated at every budget."""
    if not runs:
        raise ValueError("bench_table needs at least one run")
    first = runs[0]
    # A ratio group starts with its benchmark's full cache (group_runs): the name is the others'.
    bench = next((r.bench for r in runs if r.method != FULL_METHOD), first.bench)
    tasks: list[str] = []
    for run in runs:
        tasks += [t for t in run.scores.get("per_task") or {} if t not in tasks]
    columns = (tasks if len(tasks) > 1 else []) + [AVERAGE]
    budgets = sorted({r.budget for r in runs if r.budget is not None})
    rows = []
    for run in sorted(runs, key=lambda r: method_rank(r.method)):
        for budget in budgets if run.budget is None and budgets else [run.budget]:
            rows.append(_row(run, budget, columns))
    frame = pd.DataFrame(rows)
    frame["_order"] = [method_rank(m) for m in frame["method"]]
    frame = frame.sort_values(["budget", "_order"], kind="stable", na_position="first")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    ratios = any(r.is_ratio for r in runs)  # the budget column holds compression ratios
    frame["budget"] = frame["budget"].astype("Float64" if ratios else "Int64")
    lower = first.lower_is_better
    frame["best_average"] = best_mask(frame, AVERAGE, lower)
    ordered = ["budget", "method", "num_samples"]
    for c in columns:
        ordered += [c, f"{c}_low", f"{c}_high"]
    frame = frame[[*ordered, "best_average", "run"]]
    direction = "lower is better" if lower else "higher is better"
    unit = "percent" if _is_percent(runs) else ""
    header = [
        f"{bench}: {first.headline} ({direction}{', ' + unit if unit else ''}), methods x "
        + ("compression ratios (the budget column holds the ratio)" if ratios else "budgets"),
        *_provenance(runs, profile, _sample_counts(runs)),
        "best compressed method per budget and column in bold; intervals: 95% bootstrap over samples (CSV)",
    ]
    return BenchTable(
        model=first.model,
        bench=bench,
        metric=first.headline,
        lower_is_better=lower,
        columns=columns,
        frame=frame,
        header=header,
        unit=unit,
    )


def _markdown_view(table: BenchTable, digits: int) -> pd.DataFrame:
    """Pre-formatted cells: bold best entries, the average with its interval."""
    frame = table.frame
    view = pd.DataFrame({"budget": [format_cell(b) if pd.notna(b) else "-" for b in frame["budget"]]})
    view["method"] = frame["method"].to_numpy()
    view["n"] = frame["num_samples"].to_numpy()
    for column in table.columns:
        best = best_mask(frame, column, table.lower_is_better)
        cells = []
        for i, value in enumerate(frame[column]):
            text = format_cell(value, digits)
            if column == AVERAGE and text:
                low, high = frame[f"{column}_low"].iloc[i], frame[f"{column}_high"].iloc[i]
                if pd.notna(low):
                    text += f" [{low:.{digits}f}, {high:.{digits}f}]"
            cells.append(f"**{text}**" if best.iloc[i] and text else text)
        view[column] = cells
    return view


def write_bench_table(table: BenchTable, stem: Path, digits: int | None = None) -> list[Path]:
    """``<stem>.csv`` (values, intervals) and ``<stem>.md`` (bold best, average interval)."""
    if digits is None:
        digits = 2 if table.unit == "percent" else 3
    return write_frame(
        table.frame,
        stem,
        digits=digits,
        index=False,
        header=table.header,
        markdown=_markdown_view(table, digits),
        float_format="%.4f",
        left=2,
    )


# ------------------------------------------------------------------------------ summary table
def _percent(table: BenchTable, value: float) -> float:
    """A higher-is-better benchmark average in percent (fractions of 1 scaled by 100)."""
    return value if table.unit == "percent" else 100.0 * value


def summary_table(tables: Sequence[BenchTable]) -> pd.DataFrame:
    """Per (budget, method): each benchmark's average, their mean and the mean rank.

    ``mean %`` averages the higher-is-better benchmarks in percent; ``mean rank`` averages, over
    every benchmark that ran the budget, the method's rank among the compressed methods (1 = best,
    ties share the mean rank, lower-is-better metrics ranked ascending). The full cache is the
    reference and has no rank.
    """
    parts = []
    for table in tables:
        part = table.frame[["budget", "method", AVERAGE]].copy()
        part["bench"] = table.bench
        compressed = part["method"] != FULL_METHOD
        ranks = (
            part[compressed]
            .groupby("budget")[AVERAGE]
            .rank(ascending=table.lower_is_better, method="average")
        )
        part["rank"] = ranks.reindex(part.index)
        part["percent"] = np.nan if table.lower_is_better else [_percent(table, v) for v in part[AVERAGE]]
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    benches = list(dict.fromkeys(t.bench for t in tables))
    wide = long.pivot_table(index=["budget", "method"], columns="bench", values=AVERAGE, aggfunc="first")
    wide = wide.reindex(columns=benches)
    stats = long.groupby(["budget", "method"]).agg(
        mean_percent=("percent", "mean"), mean_rank=("rank", "mean"), benches=("bench", "nunique")
    )
    out = wide.join(stats).reset_index()
    out["_order"] = [method_rank(m) for m in out["method"]]
    out = out.sort_values(["budget", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
    out = out.rename(columns={"mean_percent": "mean %", "mean_rank": "mean rank"})
    whole = bool((out["budget"].dropna() % 1 == 0).all())  # budgets; a ratio group keeps its fractions
    out["budget"] = out["budget"].astype("Int64" if whole else "Float64")
    return out


def write_summary(tables: Sequence[BenchTable], stem: Path, profile: str | None = None) -> list[Path]:
    """``summary.csv`` / ``summary.md``: the across-benchmark table, best mean rank per budget in bold."""
    frame = summary_table(tables)
    runs_header = [
        "summary across benchmarks: average per benchmark, mean % (higher-is-better benchmarks), mean rank",
        f"model: {', '.join(sorted({t.model for t in tables}))}",
        f"profile: {profile or 'ad hoc (not a sweep profile)'}",
        "benchmarks: "
        + ", ".join(f"{t.bench} ({t.metric}, {'lower' if t.lower_is_better else 'higher'} is better)" for t in tables),
        "git commit: " + ", ".join(sorted({h.split(": ", 1)[1] for t in tables for h in t.header if h.startswith("git commit")})),
        "rank among compressed methods at the same budget, 1 = best; the full cache is not ranked",
    ]  # fmt: skip
    view = frame.copy().astype(object)
    best = best_mask(frame, "mean rank", lower_is_better=True)
    view["mean rank"] = [
        f"**{v:.2f}**" if b and pd.notna(v) else format_cell(v) for v, b in zip(frame["mean rank"], best)
    ]
    view["budget"] = [format_cell(b) if pd.notna(b) else "-" for b in frame["budget"]]
    return write_frame(
        frame, stem, digits=3, index=False, header=runs_header, markdown=view, float_format="%.4f", left=2
    )


# ------------------------------------------------------------------------- where the budget goes
def sliding_layers(run: Run) -> list[int]:
    """The layers of ``run`` that are sliding windows (a hybrid model such as Gemma 3), in order.

    A compressed run's records name the layers the cache compressed (``global_layers``, from
    :meth:`lava.cache.CompressedCache.report`); the others keep their rolling window whatever the
    budget. Empty when every layer is global, and for records that predate the field (models
    without sliding layers then).
    """
    for record in run.records:
        if "global_layers" in record and "kept_per_head" in record:
            compressed = set(record["global_layers"])
            return [i for i in range(len(record["kept_per_head"])) if i not in compressed]
    return []


def kept_share(run: Run, kept: np.ndarray) -> np.ndarray:
    """``kept / budget`` per layer and KV head (``kept`` as :func:`kept_mean` gives it), NaN on the
    run's :func:`sliding_layers`: they hold their window, not a share of the budget."""
    share = kept / run.budget
    sliding = sliding_layers(run)
    if sliding:
        share[sliding] = np.nan  # a new array: kept itself is left as it is
    return share


def budget_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Kept entries per (method, budget, layer, KV head), mean over samples, and their share of the budget.

    Columns ``method``, ``budget``, ``layer``, ``head``, ``kept`` (mean entries), ``share``
    (``kept / budget``: 1 is the uniform allocation). Runs without ``kept_per_head.npy`` are left out.
    When a run has sliding-window layers (:func:`sliding_layers`), a ``layer_kind`` column
    (``global`` / ``sliding``) follows, and a sliding layer's ``share`` is empty (NaN): its ``kept``
    is its window, which the budget does not set.
    """
    rows = []
    hybrid = False
    for run in sorted(runs, key=lambda r: (method_rank(r.method), r.budget or 0)):
        # a ratio run's budget differs by sample: no share of one budget to show
        kept = kept_mean(run) if run.budget is not None and not run.is_ratio else None
        if kept is None:
            continue
        share = kept_share(run, kept)
        sliding = set(sliding_layers(run))
        hybrid = hybrid or bool(sliding)
        for layer, heads in enumerate(kept):
            kind = "sliding" if layer in sliding else "global"
            for head, value in enumerate(heads):
                rows.append({"method": run.method, "budget": run.budget, "layer": layer, "head": head,
                             "kept": float(value), "share": float(share[layer, head]), "layer_kind": kind})  # fmt: skip
    columns = ["method", "budget", "layer", "head", "kept", "share"]
    return pd.DataFrame(rows, columns=[*columns, "layer_kind"] if hybrid else columns)


# ------------------------------------------------------------------------------------- driver
def group_runs(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs grouped by (model, bench), in a fixed order.

    A compression-ratio group (``<bench>_ratio``) also gets the full cache of its benchmark, which
    has neither budget nor ratio and so one folder for both units.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.model, run.bench), []).append(run)
    for (model, bench), group in groups.items():
        base = groups.get((model, bench.replace(RATIO_SUFFIX, "", 1))) if RATIO_SUFFIX in bench else None
        if base and not any(r.method == FULL_METHOD for r in group):
            group[:0] = [r for r in base if r.method == FULL_METHOD]
    return dict(sorted(groups.items()))


def per_model(tables: Sequence[BenchTable], out: Path) -> list[tuple[str, Path, list[BenchTable]]]:
    """``(model, folder, its tables)``: ``out`` itself for a single model, else ``out/<model>``."""
    models = sorted({t.model for t in tables})
    return [
        (m, Path(out) if len(models) == 1 else Path(out) / m, [t for t in tables if t.model == m])
        for m in models
    ]


def build_tables(runs: Sequence[Run], profile: str | None = None) -> list[BenchTable]:
    """One :class:`BenchTable` per (model, bench) of ``runs``, in :func:`group_runs` order."""
    return [bench_table(group, profile) for group in group_runs(runs).values()]


@dataclass
class ResultTables:
    """The runs of one report and their benchmark tables, built once and read by tables, figures, claims.

    Attributes
    ----------
    runs : list of Run
        Every run of the report.
    tables : list of BenchTable
        One per (model, bench), bootstrap intervals included (the costly part, done once).
    groups : dict
        ``{(model, bench): runs}`` in the tables' order.
    profile : str or None
        Sweep profile named in every header.
    """

    runs: list[Run]
    tables: list[BenchTable]
    groups: dict[tuple[str, str], list[Run]]
    profile: str | None = None


def build_result_tables(source: RunSource, profile: str | None = None) -> ResultTables:
    """The runs of ``source`` (an output root or runs), their tables and their (model, bench) groups."""
    runs = as_runs(source)
    return ResultTables(runs, build_tables(runs, profile), group_runs(runs), profile)


def write_tables(result: ResultTables, out: Path) -> list[Path]:
    """Every benchmark table and the summary of ``result`` into ``out``.

    One model: ``out/<bench>.{csv,md}``, ``out/<bench>_budget.csv`` (where kept arrays exist) and
    ``out/summary.{csv,md}``; several models: the same inside ``out/<model>/``.
    """
    written: list[Path] = []
    for model, folder, own in per_model(result.tables, out):
        for table in own:
            written += write_bench_table(table, folder / table.bench)
            budget = budget_frame(result.groups[(model, table.bench)])
            if len(budget):
                header = [
                    f"{table.bench}: kept entries per layer and KV head (mean over samples)",
                    *table.header[1:5],
                ]
                if "layer_kind" in budget:
                    header.insert(
                        1,
                        "sliding layers keep their rolling window, not compressed: share left empty",
                    )
                written.append(
                    write_csv(
                        budget, folder / f"{table.bench}_budget.csv", header=header, float_format="%.4f"
                    )
                )
        # One summary per question setting and unit: a mean rank mixes only comparable tables.
        for stem, group in summary_groups(own).items():
            written += write_summary(group, folder / stem, result.profile)
    return written


def summary_groups(tables: Sequence[BenchTable]) -> dict[str, list[BenchTable]]:
    """The tables of each (question setting, unit), by summary file stem: ``summary`` (aware,
    budgets), ``summary_agnostic``, ``summary_ratio``, ``summary_ratio_agnostic``; in table order."""
    groups: dict[str, list[BenchTable]] = {}
    for table in tables:
        _, setting, unit = split_bench(table.bench)
        stem = (
            "summary"
            + ("_ratio" if unit == RATIO_UNIT else "")
            + ("_agnostic" if setting == AGNOSTIC else "")
        )
        groups.setdefault(stem, []).append(table)
    return groups
