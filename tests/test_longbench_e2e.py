"""One tiny end-to-end LongBench run with the embedded model: fixture -> prompt -> generate -> score -> tables."""

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from eval.runner import run

REPO = Path(__file__).resolve().parents[1]


def config(overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_longbench_end_to_end(tmp_path):
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
