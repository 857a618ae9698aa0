"""What seeing the question is worth: the aware minus agnostic score per method, with intervals.

For every (model, bench, method, budget) that has runs in both settings (docs/question.md), the
difference of the benchmark average between the aware run and the agnostic one, paired over the
samples both ran: each sample's value is weighted as in the benchmark's average
(:func:`eval.tables.average_weights`: every task counts equally), and the interval is the
percentile bootstrap of the paired difference (:func:`eval.stats.paired_bootstrap_ci`). A positive
gap is what the method gains from compressing with the question in its window.

Written by :func:`write_question_gap` as ``tables/question_gap.{csv,md}`` and
``figures/question_gap.png`` when the runs hold both settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eval.collect import AGNOSTIC_SUFFIX, FULL_METHOD, RATIO_SUFFIX, Run
from eval.frames import write_frame
from eval.heatmap import save_figure
from eval.plots import method_color, plt
from eval.stats import paired_bootstrap_ci, separated
from eval.tables import average_weights, method_rank, sample_values

COLUMNS = ["model", "bench", "method", "budget", "n", "aware", "agnostic", "gap", "low", "high", "separated"]


def _weighted(run: Run) -> dict[tuple[str, str], float]:
    """``{(task, sample id): value}`` weighted so that their mean is the benchmark average."""
    return {(t, i): v for t, values in average_weights(sample_values(run)).items() for i, v in values.items()}


def question_gap_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per (model, bench, method, budget) run in both settings: the two averages over the
    shared samples, their paired difference (aware minus agnostic) and its 95% interval.

    ``bench`` is the aware benchmark's name; the full cache's row (budget empty) is the gap the
    setting makes without any eviction, which is zero up to floating point.
    """
    by_key = {(r.model, r.bench, r.method, r.budget): r for r in runs}
    rows = []
    for (model, bench, method, budget), agnostic in by_key.items():
        if not bench.endswith(AGNOSTIC_SUFFIX):
            continue
        aware = by_key.get((model, bench.removesuffix(AGNOSTIC_SUFFIX), method, budget))
        if aware is None:
            continue
        a, b = _weighted(aware), _weighted(agnostic)
        shared = [k for k in a if k in b]
        if not shared:
            continue
        gap, low, high = paired_bootstrap_ci([a[k] for k in shared], [b[k] for k in shared])
        rows.append(
            {
                "model": model,
                "bench": aware.bench,
                "method": method,
                "budget": budget,
                "n": len(shared),
                "aware": sum(a[k] for k in shared) / len(shared),
                "agnostic": sum(b[k] for k in shared) / len(shared),
                "gap": gap,
                "low": low,
                "high": high,
                "separated": separated(low, high),
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if len(frame):
        order = frame.apply(
            lambda r: (r["model"], r["bench"], method_rank(r["method"]), r["budget"] or 0), axis=1
        )
        frame = frame.iloc[sorted(range(len(frame)), key=lambda i: order.iloc[i])].reset_index(drop=True)
    whole = all(b is None or float(b).is_integer() for b in frame["budget"])
    frame["budget"] = frame["budget"].astype("Int64" if whole else "Float64")  # budgets or ratios
    return frame


def question_gap_figure(frame: pd.DataFrame, path: Path) -> Path:
    """Per benchmark, the gap of each compressed method vs budget with its 95% interval as error bars."""
    groups = list(frame.groupby(["model", "bench"], sort=False))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.0), squeeze=False)
    for ax, ((model, bench), part) in zip(axes[0], groups):
        compressed = part[part["method"] != FULL_METHOD]
        methods = list(dict.fromkeys(compressed["method"]))
        budgets = sorted(compressed["budget"].dropna().unique())
        width = 0.8 / max(len(methods), 1)
        for k, method in enumerate(methods):
            rows = compressed[compressed["method"] == method].set_index("budget").reindex(budgets)
            x = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(budgets))]
            ax.errorbar(
                x,
                rows["gap"],
                yerr=[rows["gap"] - rows["low"], rows["high"] - rows["gap"]],
                fmt="o",
                capsize=3,
                color=method_color(method),
                label=method,
            )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(budgets)), [f"{float(b):g}" for b in budgets])
        ax.set_xlabel("compression ratio" if RATIO_SUFFIX in bench else "budget (entries per KV head)")
        ax.set_ylabel("aware minus agnostic")
        ax.set_title(f"{bench} ({model}): what the question in the window is worth", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def write_question_gap(runs: Sequence[Run], tables: Path, figures: Path) -> list[Path]:
    """``tables/question_gap.{csv,md}`` and ``figures/question_gap.png``; nothing when no run has
    both settings."""
    frame = question_gap_frame(runs)
    if not len(frame):
        return []
    header = [
        "aware minus agnostic: what seeing the question is worth (docs/question.md)",
        "aware, agnostic: benchmark average over the samples both settings ran; gap: their paired "
        "difference, low/high its 95% bootstrap interval; separated: the interval excludes 0",
    ]
    written = write_frame(frame, Path(tables) / "question_gap", index=False, header=header, left=3)
    written.append(question_gap_figure(frame, Path(figures) / "question_gap.png"))
    return written
