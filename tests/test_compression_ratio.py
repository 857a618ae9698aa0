"""``compression_ratio`` (kvpress's unit) as an alternative to ``budget``: per sample the budget
B0 = int(n * (1 - ratio)) of the compressed part's n entries (lava/ratio.py, docs/question.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.collect import find_runs
from eval.runner import run
from eval.tables import bench_table, group_runs
from lava.errors import UserError
from lava.ratio import budget_for_ratio

REPO = Path(__file__).resolve().parents[1]
NIAH = [
    "bench=niah",
    "bench.lengths=[600]",
    "bench.depths=[30,70]",
    "bench.max_new_tokens=10",
    "bench.min_new_tokens=1",
    "progress=false",
]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("n", "ratio", "window", "budget"),
    [
        (1000, 0.5, 32, 500),
        (999, 0.25, 32, 749),  # 749.25 rounded towards zero, as kvpress's int(n * (1 - ratio))
        (1000, 0.0, 32, 1000),  # nothing removed
        (100, 0.9, 32, 33),  # 10 would leave no scored entry beside the window: window + 1
        (7, 0.3, 4, 5),  # int(4.9)
    ],
)
def test_budget_for_ratio_by_hand(n, ratio, window, budget):
    assert budget_for_ratio(n, ratio, window) == budget


@pytest.mark.parametrize("ratio", [1.0, 1.2, -0.1])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(UserError, match="compression_ratio="):
        budget_for_ratio(100, ratio, 8)


@pytest.mark.parametrize("setting", ["aware", "agnostic"])
def test_ratio_run_equals_the_budget_run_with_the_derived_budget(tmp_path, setting):
    base = [*NIAH, f"bench.question={setting}", f"output_root={tmp_path}", "method=lava"]
    ratio = run(_cfg(*base, "compression_ratio=0.6"))
    assert ratio.run_dir.name.startswith("lava-r0.6-")
    records = _records(ratio.run_dir)
    assert len(records) == 2
    for index, record in enumerate(records):
        compressed = record.get("context_tokens", record["prompt_tokens"])  # agnostic: the context part
        assert record["budget"] == int(compressed * (1 - 0.6))
        single = run(_cfg(*base, f"budget={record['budget']}", f"limit={index + 1}"))
        (same,) = [r for r in _records(single.run_dir) if r["id"] == record["id"]]
        for key in ("prediction", "new_tokens", "kept_per_head", "prompt_tokens"):
            assert same[key] == record[key], key


def test_ratio_sweep_equals_single_ratio_runs_and_tables_put_the_ratio_on_the_axis(tmp_path):
    base = [*NIAH, "limit=1"]
    sweep = run(_cfg(*base, "methods=[full,snapkv,lava]", "compression_ratios=[0.5,0.75]",
                     f"output_root={tmp_path / 'sweep'}"))  # fmt: skip
    names = sorted(r.run_dir.name.rsplit("-", 1)[0] for r in sweep.runs)
    assert names == ["full", "lava-r0.5", "lava-r0.75", "snapkv-r0.5", "snapkv-r0.75"]
    for swept in sweep.runs:
        method, _, unit = swept.run_dir.name.rsplit("-", 1)[0].partition("-r")
        extra = [f"compression_ratio={unit}"] if unit else []
        single = run(_cfg(*base, f"method={method}", *extra, f"output_root={tmp_path / 'single'}"))
        assert single.run_dir.name == swept.run_dir.name
        a, b = _records(swept.run_dir), _records(single.run_dir)
        assert [(r["prediction"], r.get("kept_per_head"), r.get("budget")) for r in a] == [
            (r["prediction"], r.get("kept_per_head"), r.get("budget")) for r in b
        ]
    runs = find_runs(tmp_path / "sweep")
    groups = group_runs(runs)
    assert set(groups) == {("smollm2-135m", "niah"), ("smollm2-135m", "niah_ratio")}
    table = bench_table(groups[("smollm2-135m", "niah_ratio")])
    assert table.bench == "niah_ratio" and "compression ratios" in table.header[0]
    assert sorted(table.frame["budget"].dropna().unique()) == [0.5, 0.75]
    assert set(table.frame["method"]) == {"full", "snapkv", "lava"}  # the full cache as the level


def test_bad_units_are_refused_before_any_work(tmp_path):
    from tests.test_checks import assert_refused

    assert_refused(tmp_path, ["compression_ratio=1.2"], "compression_ratio=1.2 is invalid; give the fraction")
    assert_refused(
        tmp_path, ["budget=64", "compression_ratio=0.5"], "budget= and compression_ratio= both given"
    )
    assert_refused(tmp_path, ["compression_ratios=[0.5]"], "compression_ratios=[0.5] needs methods=[...]")
    assert_refused(
        tmp_path, ["methods=[lava]", "budgets=[64]", "compression_ratios=[0.5]"], "give one of them"
    )
    assert_refused(
        tmp_path, ["methods=[lava]", "compression_ratios=[1.5]"], "compression_ratios=[1.5] is invalid"
    )
