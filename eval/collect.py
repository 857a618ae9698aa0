"""Run folders under an output root: discovery, loading, and one tidy frame of every number.

A run folder is ``<root>/<model>/<bench>/<method>-b<budget>-<hash>/`` (or ``full-<hash>/`` for the
full cache, whose identity carries no budget) holding ``scores.json``, ``predictions.jsonl``,
``config.yaml``, ``run_meta.json`` and optionally ``kept_per_head.npy``. The full cache does not
depend on the budget, so it is loaded with ``budget=None`` whatever its folder says (old sweeps
wrote one ``full-b64-...`` folder per budget; the one with the most samples is kept).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import yaml

from eval.records import load_records

FULL_METHOD = "full"
TIDY_COLUMNS = [
    "model",
    "bench",
    "method",
    "budget",
    "run",
    "task",
    "metric",
    "value",
    "num_samples",
    "headline",
    "lower_is_better",
]

_FOLDER = re.compile(
    r"^(?P<method>.+?)(?:-b(?P<budget>\d+)|-r(?P<ratio>[0-9.]+))?(?:-(?P<setting>agnostic))?"
    r"-(?P<hash>[0-9a-f]{8})$"
)
#: Suffix of the benchmark name of a question-agnostic run (``bench.question=agnostic``): its tables,
#: figures and claims are those of a benchmark of its own, ``<bench>_agnostic``, next to the aware one.
AGNOSTIC_SUFFIX = "_agnostic"
#: Suffix of the benchmark name of compression-ratio runs (``compression_ratio=``): their tables put
#: the ratio where budget runs put the budget (:attr:`Run.budget` holds the ratio, :attr:`Run.is_ratio`).
RATIO_SUFFIX = "_ratio"
#: The question settings (``bench.question``) and the units of a run's cache size, as
#: :func:`split_bench` reads them back from a benchmark name.
AWARE, AGNOSTIC = "aware", "agnostic"
BUDGET_UNIT, RATIO_UNIT = "budget", "ratio"


class BenchSetting(NamedTuple):
    """A results benchmark name taken apart: the benchmark, its question setting, its unit."""

    base: str
    setting: str
    unit: str


def split_bench(bench: str) -> BenchSetting:
    """The inverse of :func:`load_run`'s naming, ``<bench>[_ratio][_agnostic]``.

    ``"ruler_ratio_agnostic"`` -> ``("ruler", "agnostic", "ratio")``; ``"niah"`` ->
    ``("niah", "aware", "budget")``.
    """
    setting = AGNOSTIC if bench.endswith(AGNOSTIC_SUFFIX) else AWARE
    base = bench.removesuffix(AGNOSTIC_SUFFIX)
    unit = RATIO_UNIT if base.endswith(RATIO_SUFFIX) else BUDGET_UNIT
    return BenchSetting(base.removesuffix(RATIO_SUFFIX), setting, unit)


_SHARD = re.compile(r"-shard\d+of\d+$")


@dataclass
class Run:
    """One finished run folder.

    Attributes
    ----------
    path : Path
        The run folder.
    model, bench, method : str
        Config names (``model.name``, ``bench.name``, ``method.name``).
    budget : int or None
        Entries per KV head per layer; None for the full cache.
    scores : dict
        ``scores.json``.
    """

    path: Path
    model: str
    bench: str
    method: str
    budget: int | float | None  # a compression-ratio run: its ratio (is_ratio)
    scores: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_ratio(self) -> bool:
        """A compression-ratio run (:data:`RATIO_SUFFIX`): :attr:`budget` holds the ratio."""
        return isinstance(self.config.get("compression_ratio"), (int, float))

    @property
    def headline(self) -> str:
        return str(self.scores.get("headline_metric", "score"))

    @property
    def lower_is_better(self) -> bool:
        return self.is_lower_better(self.headline)

    @property
    def bench_target(self) -> Any:
        """The config's ``bench._target_`` (the benchmark class's dotted path), None when absent."""
        return (self.config.get("bench") or {}).get("_target_")

    @property
    def unit(self) -> str:
        """Unit of the headline score: ``"percent"`` or ``"fraction"``
        (:attr:`eval.benchmarks.base.Benchmark.unit`).

        scores.json's ``unit``; for folders written before scores.json carried it, the benchmark
        class's declaration (read without building the benchmark); ``"fraction"`` without either.
        """
        unit = self.scores.get("unit") or _class_attribute(self.bench_target, "unit")
        return str(unit) if unit else "fraction"

    @cached_property
    def declared_lower(self) -> frozenset[str]:
        """Lower-is-better metrics the run declares: scores.json's list and the benchmark class's
        (:attr:`eval.benchmarks.base.Benchmark.lower_is_better`).

        The class attribute ``lower_is_better`` (of the config's ``bench._target_``, read without
        building the benchmark) is either metric names or a bool about the headline metric.
        """
        names = set(self.scores.get("lower_is_better") or [])
        declared = _class_attribute(self.bench_target, "lower_is_better")
        if isinstance(declared, bool):
            names |= {self.headline} if declared else set()
        elif isinstance(declared, (list, tuple, set, frozenset)):
            names |= {str(n) for n in declared}
        return frozenset(names)

    def is_lower_better(self, metric: str) -> bool:
        return metric in self.declared_lower

    @property
    def num_samples(self) -> int:
        return int(self.scores.get("num_samples", 0))

    @cached_property
    def meta(self) -> dict[str, Any]:
        path = self.path / "run_meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def commit(self) -> str | None:
        git = self.meta.get("git") or {}
        commit = git.get("commit")
        return f"{commit[:10]}{'+dirty' if git.get('dirty') else ''}" if commit else None

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """``predictions.jsonl`` (read-only: a torn last line is skipped, not repaired)."""
        return load_records(self.path / "predictions.jsonl", repair=False)[0]

    def task_scores(self) -> dict[str, float]:
        """Headline value per task, as ``scores.json`` reports it (the benchmark's own unit)."""
        out = {}
        for task, entry in (self.scores.get("per_task") or {}).items():
            if isinstance(entry, dict):
                value = entry.get(self.headline, entry.get("score"))
                if _is_number(value):
                    out[task] = float(value)
        return out

    def task_counts(self) -> dict[str, int]:
        return {
            task: int(entry.get("num_samples", 0))
            for task, entry in (self.scores.get("per_task") or {}).items()
            if isinstance(entry, dict)
        }


def kept_mean(run: Run) -> np.ndarray | None:
    """Mean kept entries over samples, shape (layers, kv_heads), from ``kept_per_head.npy`` (None if absent)."""
    path = run.path / "kept_per_head.npy"
    if not path.exists():
        return None
    kept = np.load(path)
    return kept.mean(axis=0) if kept.ndim == 3 and len(kept) else None


def _class_attribute(target: Any, name: str) -> Any:
    """``getattr(<class at dotted path target>, name)``; None when the class cannot be imported."""
    if not isinstance(target, str) or "." not in target:
        return None
    module, _, attr = target.rpartition(".")
    try:
        return getattr(getattr(importlib.import_module(module), attr), name, None)
    except (ImportError, AttributeError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def parse_folder_name(name: str) -> tuple[str, int | None]:
    """``"lava-b64-1a2b3c4d"`` -> ``("lava", 64)``; ``"full-1a2b3c4d"`` -> ``("full", None)``;
    ``"lava-b64-agnostic-1a2b3c4d"`` -> ``("lava", 64)``."""
    match = _FOLDER.match(name)
    if not match:
        raise ValueError(f"not a run folder name: {name}")
    budget = match.group("budget")
    return match.group("method"), int(budget) if budget is not None else None


def load_run(path: Path) -> Run:
    """Read one run folder; names come from ``config.yaml`` when present, else from the path."""
    scores = json.loads((path / "scores.json").read_text())
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    method, budget = parse_folder_name(_SHARD.sub("", path.name))

    def name(group: str, fallback: str) -> str:
        node = config.get(group)
        return str(node.get("name", fallback)) if isinstance(node, dict) else fallback

    method = name("method", method)
    bench = name("bench", path.parent.name)
    if isinstance(config.get("budget"), int):
        budget = config["budget"]
    ratio = config.get("compression_ratio")
    if isinstance(ratio, (int, float)) and method != FULL_METHOD:
        bench, budget = bench + RATIO_SUFFIX, float(ratio)  # the ratio takes the budget's place
    if (config.get("bench") or {}).get("question") == "agnostic":
        bench += AGNOSTIC_SUFFIX  # last: <bench>[_ratio]_agnostic
    if method == FULL_METHOD:
        budget = None
    return Run(
        path=path,
        model=name("model", path.parent.parent.name),
        bench=bench,
        method=method,
        budget=budget,
        scores=scores,
        config=config,
    )


def find_runs(root: Path) -> list[Run]:
    """Every finished run folder under ``root`` (any depth), shards skipped, in a fixed order.

    Shard folders (``...-shard0of4``) are parts of a run, counted once merged. When several folders
    share (model, bench, method, budget) - e.g. old per-budget full-cache folders, or a config
    changed between runs - the one with the most samples wins (then the newest name, for ties).
    """
    runs: dict[tuple[str, str, str, int | None], Run] = {}
    for scores_path in sorted(Path(root).rglob("scores.json")):
        folder = scores_path.parent
        if _SHARD.search(folder.name) or not _FOLDER.match(folder.name):
            continue
        run = load_run(folder)
        key = (run.model, run.bench, run.method, run.budget)
        if key not in runs or run.num_samples > runs[key].num_samples:
            runs[key] = run
    return [runs[k] for k in sorted(runs, key=lambda k: (k[0], k[1], k[2], -1 if k[3] is None else k[3]))]


RunSource = Path | str | Sequence[Run]


def as_runs(source: RunSource) -> list[Run]:
    """Runs from an output root (searched with :func:`find_runs`) or an explicit list of runs."""
    if isinstance(source, (str, Path)):
        return find_runs(Path(source))
    return list(source)


def tidy_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run x task x metric (numeric per-task entries of scores.json, plus ``all``).

    The ``all`` task holds the run's headline ``score`` and, where the benchmark reports them,
    its overall per-metric means (``metrics``).
    """
    rows = []
    for run in runs:
        base = {
            "model": run.model,
            "bench": run.bench,
            "method": run.method,
            "budget": run.budget,
            "run": run.path.name,
        }
        overall = {"score": run.scores.get("score")}
        overall.update(run.scores.get("metrics") or {})
        per_task = {"all": {"num_samples": run.num_samples, **overall}}
        per_task.update(run.scores.get("per_task") or {})
        for task, entry in per_task.items():
            if not isinstance(entry, dict):
                continue
            for metric, value in entry.items():
                if metric == "num_samples" or not _is_number(value):
                    continue
                rows.append(
                    {
                        **base,
                        "task": task,
                        "metric": metric,
                        "value": float(value),
                        "num_samples": entry.get("num_samples"),
                        "headline": metric == run.headline or (metric == "score" and task == "all"),
                        # the overall ``score`` is the headline metric's value, with its direction
                        "lower_is_better": run.lower_is_better
                        if (metric == "score" and task == "all")
                        else run.is_lower_better(metric),
                    }
                )
    frame = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    frame["budget"] = frame["budget"].astype("Int64")
    frame["num_samples"] = frame["num_samples"].astype("Int64")
    return frame


def write_tidy_csv(source: RunSource, path: Path) -> Path:
    """Gather every run of ``source`` (an output root or runs) into one CSV (the ``collect`` step)."""
    frame = tidy_frame(as_runs(source))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(index=False, float_format="%.6g", lineterminator="\n"), encoding="utf-8")
    return path
