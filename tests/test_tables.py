"""eval.tables: per-benchmark tables and the summary, checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from run_folders import make_run, per_sample, results_root, toy_root

from eval.collect import find_runs
from eval.frames import read_header, read_table
from eval.results import write_results
from eval.tables import (
    average_weights,
    bench_table,
    build_result_tables,
    build_tables,
    sample_values,
    summary_table,
    write_tables,
)


def table_of(root, bench):
    return next(t for t in build_tables(find_runs(root), profile="cpu") if t.bench == bench)


def test_bench_table_values_full_row_repeated_and_best(tmp_path):
    table = table_of(toy_root(tmp_path), "toy")
    frame = table.frame
    # row order from the method registry (eval.method_configs.display_order): full first, then by name
    assert list(zip(frame["budget"], frame["method"])) == [
        (64, "full"), (64, "lava"), (64, "snapkv"), (128, "full"), (128, "lava"), (128, "snapkv"),
    ]  # fmt: skip
    assert table.columns == ["a", "b", "average"]
    assert frame["a"].tolist() == [1.0, 1.0, 0.5, 1.0, 0.5, 1.0]
    assert frame["b"].tolist() == [0.5, 0.5, 0.0, 0.5, 1.0, 0.5]
    assert frame["average"].tolist() == [0.75, 0.75, 0.25, 0.75, 0.75, 0.75]
    # the full cache is one budget-less folder, shown at both budgets
    assert frame.loc[frame["method"] == "full", "run"].tolist() == ["full-0123abcd"] * 2
    # best compressed method per budget; a tie marks both; the full cache is never marked
    assert frame["best_average"].tolist() == [False, True, False, False, True, True]
    # intervals bracket the value; a constant column has a zero-width interval
    assert (frame["average_low"] <= frame["average"]).all() and (
        frame["average"] <= frame["average_high"]
    ).all()
    lava64 = frame.iloc[1]
    assert lava64["a_low"] == lava64["a_high"] == 1.0


def test_lower_is_better_builtin_and_declared(tmp_path):
    fid = table_of(toy_root(tmp_path), "fid")
    assert fid.lower_is_better and fid.frame.set_index("method")["best_average"].to_dict() == {
        "full": False, "snapkv": False, "lava": True,
    }  # fmt: skip
    for declared, best in ((["err"], "a"), (None, "b")):
        root = tmp_path / f"decl{best}"
        extra = {"lower_is_better": declared} if declared else {}
        make_run(
            root,
            bench="x",
            method="a",
            budget=8,
            scores=per_sample("t", [0.1], "err"),
            headline="err",
            extra_scores=extra,
        )
        make_run(
            root,
            bench="x",
            method="b",
            budget=8,
            scores=per_sample("t", [0.9], "err"),
            headline="err",
            extra_scores=extra,
        )
        frame = table_of(root, "x").frame
        assert frame.loc[frame["best_average"], "method"].tolist() == [best]


@pytest.mark.parametrize("target", ["run_folders.ErrorBench", "run_folders.HeadlineLowerBench"])
def test_lower_is_better_from_the_benchmark_class(tmp_path, target):
    for method, err in (("a", 0.1), ("b", 0.9)):
        scores = per_sample("t", [err], "err")
        make_run(
            tmp_path, bench="x", method=method, budget=8, scores=scores, headline="err", bench_target=target
        )
    frame = table_of(tmp_path, "x").frame
    assert frame.loc[frame["best_average"], "method"].tolist() == ["a"]


def test_old_per_budget_full_folders_collapse_to_the_largest(tmp_path):
    make_run(
        tmp_path, bench="toy", method="full", budget=64, scores=per_sample("a", [1, 0]), digest="aaaaaaaa"
    )
    make_run(
        tmp_path, bench="toy", method="full", budget=128, scores=per_sample("a", [1, 1, 1]), digest="bbbbbbbb"
    )
    make_run(tmp_path, bench="toy", method="snapkv", budget=64, scores=per_sample("a", [0, 0, 0]))
    make_run(tmp_path, bench="toy", method="snapkv", budget=128, scores=per_sample("a", [0, 1, 0]))
    frame = table_of(tmp_path, "toy").frame
    full = frame[frame["method"] == "full"]
    assert full["budget"].tolist() == [64, 128] and full["run"].tolist() == ["full-b128-bbbbbbbb"] * 2
    assert full["average"].tolist() == [1.0, 1.0]


def test_average_weights_make_the_plain_mean_the_mean_of_task_means():
    per_task = {"a": {"a0": 1.0, "a1": 0.0, "a2": 0.0}, "b": {"b0": 1.0}}
    weighted = average_weights(per_task)
    flat = [x for v in weighted.values() for x in v.values()]
    assert np.mean(flat) == pytest.approx((1 / 3 + 1) / 2)
    assert weighted["a"]["a0"] == pytest.approx(2 / 3) and weighted["b"]["b0"] == pytest.approx(2.0)


def test_percent_benchmarks_scale_sample_values(tmp_path):
    def percent(records):
        values = [r["scores"]["score"] for r in records]
        return {"score": 100 * sum(values) / len(values), "headline_metric": "score", "num_samples": len(values),
                "unit": "percent",
                "per_task": {"t": {"num_samples": len(values), "score": 100 * sum(values) / len(values)}}}  # fmt: skip

    make_run(
        tmp_path,
        bench="infinitebench",
        method="snapkv",
        budget=8,
        scores=per_sample("t", [1, 0, 1, 0]),
        aggregate=percent,
    )
    run = find_runs(tmp_path)[0]
    assert sample_values(run) == {"t": {"t0": 100.0, "t1": 0.0, "t2": 100.0, "t3": 0.0}}
    row = bench_table([run]).frame.iloc[0]
    assert row["average"] == 50.0 and 0.0 <= row["average_low"] < 50.0 < row["average_high"] <= 100.0


@pytest.mark.parametrize("unit", ["percent", "fraction"])
def test_percent_label_follows_the_declared_unit_not_the_values(tmp_path, unit):
    # a fraction benchmark whose raw metric exceeds 1 is not percent; a declared percent one is
    make_run(
        tmp_path,
        bench="x",
        method="snapkv",
        budget=8,
        scores=per_sample("t", [2.0, 3.0], "tokens"),
        headline="tokens",
        extra_scores={"unit": unit},
    )
    table = table_of(tmp_path, "x")
    assert table.unit == ("percent" if unit == "percent" else "")
    assert (
        table.header[0]
        == f"x: tokens (higher is better{', percent' if unit == 'percent' else ''}), methods x budgets"
    )


def test_written_files_header_markdown_and_rerun_identical(tmp_path):
    root = toy_root(tmp_path / "runs")
    first = write_tables(build_result_tables(root, "cpu"), tmp_path / "t1")
    second = write_tables(build_result_tables(root, "cpu"), tmp_path / "t2")
    assert sorted(p.name for p in first) == [
        "fid.csv",
        "fid.md",
        "summary.csv",
        "summary.md",
        "toy.csv",
        "toy.md",
    ]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()
    header = read_header(tmp_path / "t1" / "toy.csv")
    assert "model: tiny" in header and "profile: cpu" in header
    assert "samples per run: a 2, b 2" in header and "git commit: abcdef1234" in header
    csv = read_table(tmp_path / "t1" / "toy.csv")
    assert csv["average"].tolist() == [0.75, 0.75, 0.25, 0.75, 0.75, 0.75]
    md = (tmp_path / "t1" / "toy.md").read_text().splitlines()
    assert md[0] == "## toy: score (higher is better), methods x budgets"
    row = next(line for line in md if line.startswith("| 64 | lava |"))
    assert row.startswith("| 64 | lava | 4 | **1.000** | **0.500** | **0.750 [")
    assert next(line for line in md if line.startswith("| 64 | snapkv |")).count("**") == 0


def test_summary_mean_percent_and_rank(tmp_path):
    summary = summary_table(build_tables(find_runs(toy_root(tmp_path))))
    at64 = summary[summary["budget"] == 64].set_index("method")
    # toy is a fraction (x100 in mean %); fid is lower-is-better: ranked, not averaged
    assert at64.loc["lava", "mean %"] == pytest.approx(75.0) and at64.loc[
        "snapkv", "mean %"
    ] == pytest.approx(25.0)
    assert at64.loc["lava", "mean rank"] == 1.0 and at64.loc["snapkv", "mean rank"] == 2.0
    assert math.isnan(at64.loc["full", "mean rank"])
    assert at64.loc["lava", "fid"] == pytest.approx(0.25) and at64.loc["lava", "benches"] == 2
    at128 = summary[summary["budget"] == 128].set_index("method")
    assert at128.loc["lava", "mean rank"] == at128.loc["snapkv", "mean rank"] == 1.5  # tie on toy
    assert pd.isna(at128.loc["lava", "fid"])


def test_write_results_rerun_is_byte_identical(tmp_path):
    root = results_root(tmp_path / "runs")
    first = write_results(root, tmp_path / "r1", profile="cpu")
    second = write_results(root, tmp_path / "r2", profile="cpu")
    names = sorted(str(p.relative_to(tmp_path / "r1")) for p in first)
    assert names == sorted(str(p.relative_to(tmp_path / "r2")) for p in second)
    assert {"claims.md", "claims.csv", "runs.csv", "tables/summary.md", "figures/niah_grid.png"} <= set(names)
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_write_results_builds_each_bench_table_once(tmp_path, monkeypatch):
    built = []
    original = bench_table
    monkeypatch.setattr(
        "eval.tables.bench_table",
        lambda runs, profile=None: built.append(runs[0].bench) or original(runs, profile),
    )
    write_results(results_root(tmp_path / "runs"), tmp_path / "r", profile="cpu")
    # tables, figures and claims (lava has a rival at its budgets) read the same two tables
    assert sorted(built) == ["fidelity", "niah"]


def test_code_completion_interval_is_on_the_scale_of_its_score(tmp_path):
    """The table showed 9.30 [0.00, 0.22]: a percent mean with an interval of fractions, because
    CodeCompletion.aggregate put only the headline on LongBench's 0-100 scale, not the task entry."""
    from eval.benchmarks.code_completion import CodeCompletion

    values = [0.0, 0.2, 0.4, 0.1, 0.3]  # mean 0.2: 20.0 on LongBench's scale
    make_run(
        tmp_path,
        bench="code_completion",
        method="lava",
        budget=64,
        scores=per_sample("lcc", values),
        aggregate=CodeCompletion().aggregate,
        bench_target="eval.benchmarks.code_completion.CodeCompletion",
    )
    table = bench_table(find_runs(tmp_path))
    row = table.frame.iloc[0]
    assert row["average"] == pytest.approx(20.0)  # one task: the table's only column
    assert 0.0 <= row["average_low"] < 20.0 < row["average_high"] <= 40.0


def test_summary_keeps_compression_ratios_as_fractions():
    """A ratio group's summary cast its budget axis to integers: ratios 0.25 and 0.5 both read "0"."""
    from types import SimpleNamespace

    frame = pd.DataFrame(
        {
            "budget": [0.25, 0.25, 0.5, 0.5],
            "method": ["full", "snapkv", "full", "snapkv"],
            "average": [1.0, 0.5, 1.0, 0.25],
        }
    )
    table = SimpleNamespace(frame=frame, bench="niah_ratio", lower_is_better=False, unit="")
    summary = summary_table([table])
    assert summary["budget"].tolist() == [0.25, 0.25, 0.5, 0.5]
    assert summary[summary["method"] == "snapkv"]["mean %"].tolist() == [50.0, 25.0]


def test_one_summary_per_question_setting_and_unit():
    """The mean rank mixed agnostic tables in with the aware ones as if they were more benchmarks."""
    from types import SimpleNamespace

    from eval.tables import summary_groups

    names = ["niah", "ruler", "niah_agnostic", "niah_ratio", "ruler_ratio_agnostic", "ruler_agnostic"]
    groups = summary_groups([SimpleNamespace(bench=n) for n in names])
    assert {stem: [t.bench for t in ts] for stem, ts in groups.items()} == {
        "summary": ["niah", "ruler"],
        "summary_agnostic": ["niah_agnostic", "ruler_agnostic"],
        "summary_ratio": ["niah_ratio"],
        "summary_ratio_agnostic": ["ruler_ratio_agnostic"],
    }
