"""One tiny end-to-end LongBench run with the embedded model: fixture -> prompt -> generate -> score -> tables."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.runner import run
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def config(overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_longbench_end_to_end_and_offline_error(tmp_path):
    cfg = config(
        [
            "bench=longbench",
            f"bench.data_dir={REPO / 'tests/fixtures/longbench'}",
            "bench.tasks=[passage_count]",
            "bench.samples_per_task=1",
            "method=full",
            f"output_root={tmp_path}",
            "progress=false",
        ]
    )
    summary = run(cfg)
    (record,) = [
        json.loads(line) for line in (summary.run_dir / "predictions.jsonl").read_text().splitlines()
    ]
    assert record["task"] == "passage_count" and 0 < record["new_tokens"] <= 32
    scores = json.loads((summary.run_dir / "scores.json").read_text())
    assert scores["per_task"]["passage_count"]["score"] == round(100 * record["scores"]["score"], 2)
    assert scores["score"] == summary.score
    names = {p.name for p in summary.paths}
    assert {
        "longbench_tasks.csv",
        "longbench_tasks.md",
        "longbench_averages.csv",
        "longbench_averages.md",
    } <= names

    # Offline (conftest sets HF_HUB_OFFLINE=1), no data_dir, empty cache: a one-line UserError.
    offline = config(["bench=longbench", f"bench.cache_dir={tmp_path / 'empty'}", f"output_root={tmp_path}"])
    with pytest.raises(UserError) as err:
        run(offline)
    assert "bench.data_dir=" in str(err.value) and "\n" not in str(err.value)
