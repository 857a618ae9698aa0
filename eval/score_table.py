"""A comparison a reader takes in at a glance: each run's headline score with its 95% interval.

What ``make run`` prints at the end of its sweep (:func:`format_score_table`) and the NIAH grid it
writes next to it (:func:`write_niah_figure`). The interval is the percentile bootstrap of the mean
over samples (:func:`eval.stats.bootstrap_ci`: 2000 resamples, fixed seed, so the same folders
always print the same table).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from eval.collect import Run, load_run
from eval.method_configs import display_order
from eval.plots import niah_grid
from eval.stats import bootstrap_ci
from eval.tables import average_weights
from eval.tables import sample_values as table_sample_values

HEADER = ("method", "budget", "n")


def _order(run: Run) -> tuple[int, str, int]:
    """Table order: the methods' display order (full cache first), then budget."""
    order = display_order()
    rank = order.index(run.method) if run.method in order else len(order)
    return rank, run.method, -1 if run.budget is None else run.budget


def sample_values(run: Run) -> list[float]:
    """Each sample's headline value on the scale of the run's scores.json (a percent benchmark whose
    records hold fractions is scaled, as in the tables), weighted so that their plain mean is the
    headline: the mean of the task means (:func:`eval.tables.average_weights`)."""
    per_task = average_weights(table_sample_values(run))
    return [value for task in per_task.values() for value in task.values()]


def _block(runs: Sequence[Run]) -> list[str]:
    """The table of one (model, bench): a title line, a header, one row per run."""
    first = runs[0]
    direction = "lower is better" if first.lower_is_better else "higher is better"
    title = (
        f"{first.bench} on {first.model}: {first.headline} per sample ({direction}), mean and 95% interval"
    )
    digits = 1 if first.unit == "percent" else 3
    rows = []
    for run in sorted(runs, key=_order):
        values = sample_values(run)
        mean, low, high = bootstrap_ci(values)
        budget = "-" if run.budget is None else str(run.budget)
        rows.append(
            (
                run.method,
                budget,
                str(len(values)),
                f"{mean:.{digits}f}",
                f"[{low:.{digits}f}, {high:.{digits}f}]",
            )
        )
    header = (*HEADER, first.headline, "95% interval")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:1], widths)]  # method names left-aligned, numbers right
        return "  ".join(left + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return [title, line(header), *(line(row) for row in rows)]


def format_score_table(run_dirs: list[Path]) -> str:
    """A plain-text table of the runs in ``run_dirs``: per run, the mean headline score over its
    samples and the 95% percentile-bootstrap interval of that mean.

    Parameters
    ----------
    run_dirs : list of Path
        Finished run folders (``scores.json``, ``predictions.jsonl``, ``config.yaml``). Folders of
        different (model, bench) pairs get one table each, in the order they first appear.

    Returns
    -------
    str
        The tables, separated by a blank line; rows in display order (full cache first), then budget.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for path in run_dirs:
        run = load_run(Path(path))
        groups.setdefault((run.model, run.bench), []).append(run)
    return "\n\n".join("\n".join(_block(runs)) for runs in groups.values())


def write_niah_figure(run_dirs: list[Path], path: Path) -> Path | None:
    """The NIAH depth x length grid of the runs in ``run_dirs`` (:func:`eval.plots.niah_grid`).

    Returns the written file, or None when no run has NIAH samples (length and depth in their meta).
    """
    return niah_grid([load_run(Path(p)) for p in run_dirs], Path(path))
