"""eval.collect and scripts/collect.py: run discovery and the tidy CSV."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from run_folders import make_run, per_sample, toy_root

from eval.collect import find_runs, parse_folder_name, tidy_frame

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("lava-b64-1a2b3c4d", ("lava", 64)),
        ("full-1a2b3c4d", ("full", None)),
        ("lava_head_only-b128-00000000", ("lava_head_only", 128)),
    ],
)
def test_parse_folder_name(name, parsed):
    assert parse_folder_name(name) == parsed


def test_find_runs_skips_shards_and_unfinished(tmp_path):
    make_run(tmp_path, bench="toy", method="snapkv", budget=64, scores=per_sample("a", [1]))
    shard = make_run(tmp_path, bench="toy", method="lava", budget=64, scores=per_sample("a", [1]))
    shard.rename(shard.with_name(shard.name + "-shard0of2"))
    unfinished = make_run(tmp_path, bench="toy", method="cake", budget=64, scores=per_sample("a", [1]))
    (unfinished / "scores.json").unlink()
    assert [(r.method, r.budget) for r in find_runs(tmp_path)] == [("snapkv", 64)]


def test_tidy_rows_one_per_run_task_metric(tmp_path):
    frame = tidy_frame(find_runs(toy_root(tmp_path)))
    # toy: 5 runs x (all: score, a: score, b: score); fid: 3 runs x (all: score and kl, code: kl)
    assert len(frame) == 5 * 3 + 3 * 3
    lava = frame[(frame["bench"] == "toy") & (frame["method"] == "lava") & (frame["budget"] == 64)]
    assert lava.set_index(["task", "metric"])["value"].to_dict() == {
        ("all", "score"): 0.75, ("a", "score"): 1.0, ("b", "score"): 0.5,
    }  # fmt: skip
    assert frame.loc[frame["method"] == "full", "budget"].isna().all()
    fid_all = frame[(frame["bench"] == "fid") & (frame["task"] == "all")]
    assert fid_all["lower_is_better"].all() and fid_all["headline"].all()


def test_collect_script(tmp_path):
    toy_root(tmp_path / "runs")
    out = tmp_path / "tidy.csv"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "collect.py"), "--output-root", str(tmp_path / "runs"),
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(pd.read_csv(out)) == 24
    missing = subprocess.run([sys.executable, str(REPO / "scripts" / "collect.py"), "--output-root", str(tmp_path / "none")],
                             capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert (
        missing.returncode == 2
        and missing.stderr.startswith("error: ")
        and len(missing.stderr.splitlines()) == 1
    )
