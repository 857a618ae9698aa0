"""The aware minus agnostic gap (eval/question_gap.py) on run folders with hand-set per-sample scores."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from run_folders import make_run, per_sample

from eval.collect import find_runs
from eval.frames import read_table
from eval.question_gap import question_gap_frame
from eval.results import write_results


def _agnostic(run_dir: Path) -> Path:
    """Mark a folder written by make_run as a question-agnostic run (config and folder name)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["bench"]["question"] = "agnostic"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    method_budget, digest = run_dir.name.rsplit("-", 1)
    return run_dir.rename(run_dir.with_name(f"{method_budget}-agnostic-{digest}"))


def _both(root: Path, method: str, budget: int | None, aware: dict, agnostic: dict, digest: str) -> None:
    make_run(root, bench="niah", method=method, budget=budget, digest=digest,
             scores=[s for t, v in aware.items() for s in per_sample(t, v)])  # fmt: skip
    _agnostic(
        make_run(
            root,
            bench="niah",
            method=method,
            budget=budget,
            digest=digest[::-1],
            scores=[s for t, v in agnostic.items() for s in per_sample(t, v)],
        )  # fmt: skip
    )


def test_gap_is_the_paired_difference_of_the_task_weighted_averages(tmp_path):
    # Two tasks of unequal size: the benchmark average weights each task equally.
    _both(
        tmp_path, "snapkv", 64, {"a": [1, 1, 1, 1], "b": [1, 0]}, {"a": [0, 0, 1, 1], "b": [0, 0]}, "0000aaaa"
    )
    _both(
        tmp_path, "full", None, {"a": [1, 0, 1, 0], "b": [1, 1]}, {"a": [1, 0, 1, 0], "b": [1, 1]}, "0000bbbb"
    )
    runs = find_runs(tmp_path)
    assert {r.bench for r in runs} == {"niah", "niah_agnostic"}
    frame = question_gap_frame(runs)
    assert list(frame["method"]) == ["full", "snapkv"]  # display order: the full cache first
    full, snapkv = frame.iloc[0], frame.iloc[1]
    # aware: (1 + 0.5) / 2 = 0.75; agnostic: (0.5 + 0) / 2 = 0.25
    assert snapkv["aware"] == pytest.approx(0.75) and snapkv["agnostic"] == pytest.approx(0.25)
    assert snapkv["gap"] == pytest.approx(0.5) and snapkv["n"] == 6 and snapkv["budget"] == 64
    assert snapkv["low"] <= 0.5 <= snapkv["high"]
    assert full["gap"] == 0.0 and full["low"] == full["high"] == 0.0 and not full["separated"]


def test_write_results_adds_the_gap_only_with_both_settings(tmp_path):
    aware_only = tmp_path / "aware_only"
    make_run(aware_only, bench="niah", method="lava", budget=64, scores=per_sample("t", [1, 0, 1]))
    names = {p.name for p in write_results(aware_only, tmp_path / "r1")}
    assert "question_gap.csv" not in names and "question_gap.png" not in names

    both = tmp_path / "both"
    _both(both, "lava", 64, {"t": [1, 1, 1, 0]}, {"t": [0, 1, 0, 0]}, "0000cccc")
    written = {p.name: p for p in write_results(both, tmp_path / "r2")}
    assert {"question_gap.csv", "question_gap.md", "question_gap.png", "niah_agnostic.csv"} <= set(written)
    table = read_table(written["question_gap.csv"])
    assert table.loc[0, "gap"] == pytest.approx(0.5) and table.loc[0, "bench"] == "niah"
