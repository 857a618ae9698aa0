"""scripts/bench_scorer_cost.py: the paired ratio by hand, the method list, a tiny real run, early errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eval.frames import read_header, read_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import bench_scorer_cost as cli  # noqa: E402

TABLE_COLUMNS = [
    "method", "scorer", "queries", "prefill_s", "scoring_s", "build_s", "total_s", "total_min_s",
    "total_max_s", "x_snapkv", "x_snapkv_min", "x_snapkv_max", "repeats", "tokens", "budget",
]  # fmt: skip


def _phases(rep: int, method: str, prefill: float, scoring: float, build: float) -> dict:
    return {"method": method, "repeat": rep, "prefill_s": prefill, "scoring_s": scoring, "build_s": build}


def test_summary_pairs_each_repeat_with_snapkv_of_the_same_repeat():
    # SnapKV totals 1, 2, 1; the other method's 1.5, 2, 3 -> per-repeat ratios 1.5, 1.0, 3.0.
    # The ratio of the medians would be 2 / 1 = 2: the paired median is 1.5.
    raw = [
        _phases(0, "snapkv", 0.5, 0.25, 0.25),
        _phases(0, "other", 1.0, 0.25, 0.25),
        _phases(1, "other", 1.0, 0.5, 0.5),
        _phases(1, "snapkv", 1.0, 0.5, 0.5),
        _phases(2, "snapkv", 0.5, 0.25, 0.25),
        _phases(2, "other", 2.0, 0.5, 0.5),
    ]
    describe = {"snapkv": ("SnapKVScorer", "32"), "other": ("X", "all")}
    table = cli.summarize(raw, ["snapkv", "other"], describe).set_index("method")
    assert list(table.index) == ["snapkv", "other"]
    other = table.loc["other"]
    assert other.x_snapkv == pytest.approx(1.5)
    assert (other.x_snapkv_min, other.x_snapkv_max) == pytest.approx((1.0, 3.0))
    assert (other.total_s, other.total_min_s, other.total_max_s) == pytest.approx((2.0, 1.5, 3.0))
    assert (other.prefill_s, other.scoring_s, other.build_s) == pytest.approx((1.0, 0.5, 0.5))
    assert (table.loc["snapkv"].x_snapkv, table.loc["snapkv"].total_s) == (1.0, 1.0)
    assert (other.scorer, other.queries) == ("X", "all")


def test_methods_all_is_every_config_and_snapkv_always_runs():
    configs = sorted(p.stem for p in (REPO / "configs" / "method").glob("*.yaml"))
    assert cli.parse_args(["--methods", "all"]).methods == configs
    assert cli.parse_args([]).methods == configs
    assert cli.parse_args(["--methods", "knorm,h2o"]).methods == ["snapkv", "knorm", "h2o"]
    assert cli.parse_args(["--methods", "h2o, snapkv"]).methods == ["h2o", "snapkv"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--methods", "snapkv,no_such_method"], "no_such_method"),
        (["--tokens", "100", "--budget", "128"], "--tokens 100 must exceed --budget 128"),
        (["--methods", "h2o", "--budget", "16"], "budget=16 must exceed"),  # the window (32) is part of it
    ],
)
def test_bad_arguments_exit_with_one_line_before_the_model_loads(monkeypatch, argv, needle):
    import lava.models

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(lava.models, "load_model", no_load)
    monkeypatch.setattr(lava.models, "load_tokenizer", no_load)
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--out", "/nonexistent/never-written"])
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith("bench_scorer_cost.py: error:") and needle in message


def test_tiny_run_writes_one_row_per_method_with_snapkv_at_one(tmp_path, capsys):
    assert (
        cli.main(
            ["--tokens", "200", "--repeats", "1", "--methods", "snapkv,knorm,h2o", "--out", str(tmp_path)]
        )
        == 0
    )

    table = read_table(tmp_path / "scorer_cost.csv")
    assert list(table.columns) == TABLE_COLUMNS
    assert list(table.method) == ["snapkv", "knorm", "h2o"]
    rows = table.set_index("method")
    assert rows.loc["snapkv", "x_snapkv"] == 1.0
    assert (rows.loc["snapkv", "x_snapkv_min"], rows.loc["snapkv", "x_snapkv_max"]) == (1.0, 1.0)
    times = table[["prefill_s", "scoring_s", "build_s", "total_s", "total_min_s", "total_max_s"]]
    assert (times > 0).all().all()
    # One repeat: the total is the sum of its phases, the ratio the two totals' quotient (6 decimals in the CSV).
    assert table.total_s.to_numpy() == pytest.approx(
        (table.prefill_s + table.scoring_s + table.build_s).to_numpy(), abs=2e-6
    )
    assert rows.loc["h2o", "x_snapkv"] == pytest.approx(
        rows.loc["h2o", "total_s"] / rows.loc["snapkv", "total_s"], rel=1e-4
    )
    # SnapKV reads its 32-token window's queries; H2O, every prompt query.
    assert (str(rows.loc["snapkv", "queries"]), rows.loc["h2o", "queries"]) == ("32", "all")
    assert (table.tokens == 200).all() and (table.budget == 128).all() and (table.repeats == 1).all()

    raw = read_table(tmp_path / "scorer_cost_raw.csv")
    assert sorted(raw.method) == ["h2o", "knorm", "snapkv"] and set(raw.repeat) == {0}

    header = " ".join(read_header(tmp_path / "scorer_cost.csv"))
    for fact in ("torch ", "torch threads", "1 repeats", "200 tokens", "Commit "):
        assert fact in header
    md = (tmp_path / "scorer_cost.md").read_text()
    assert "| method | scorer | prefill s | scoring s | build s | total s | x SnapKV |" in md
    assert sum(line.startswith(("| snapkv ", "| knorm ", "| h2o ")) for line in md.splitlines()) == 3

    progress = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("[scorer-cost] repeat")
    ]
    assert len(progress) == 3 and all("prefill" in line and "scoring" in line for line in progress)
