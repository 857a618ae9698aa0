"""Everything a researcher reads, from run folders: ``results/tables``, ``results/figures``,
``results/claims.md`` and ``results/runs.csv``."""

from __future__ import annotations

from pathlib import Path

from eval.claims import write_claims
from eval.collect import RunSource, write_tidy_csv
from eval.plots import write_figures
from eval.question_gap import write_question_gap
from eval.tables import build_result_tables, write_tables


def write_results(
    source: RunSource, results: Path, profile: str | None = None, perf_csv: Path | None = None
) -> list[Path]:
    """Every table, figure and claim of ``source`` (an output root or runs) under ``results``
    (and, where runs hold both question settings, the aware minus agnostic gap).

    Parameters
    ----------
    source : Path or sequence of Run
        An output root (every finished run folder under it) or the runs of one sweep.
    results : Path
        Receives ``tables/``, ``figures/``, ``claims.md``, ``claims.csv`` and ``runs.csv``.
    profile : str, optional
        Sweep profile name recorded in every header (``cpu``, ``paper``).
    perf_csv : Path, optional
        ``results/perf/perf.csv`` of ``make bench-perf``, drawn as ``figures/perf.png`` when present.
    """
    built = build_result_tables(source, profile)  # the bootstrap intervals, computed once
    results = Path(results)
    return [
        *write_tables(built, results / "tables"),
        *write_figures(built, results / "figures", perf_csv=perf_csv),
        *write_question_gap(built.runs, results / "tables", results / "figures"),
        *write_claims(built, results),
        write_tidy_csv(built.runs, results / "runs.csv"),
    ]
