"""Fidelity (teacher-forced, no decoding) under the sweep: one prefill per sample, same scores as single runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.runner import run

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "bench=fidelity",
    "bench.lengths=[300]",
    "bench.continuation_tokens=8",
    "bench.samples_per_source=1",
    "progress=false",
]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, *overrides])


def _scores(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: {**r["scores"], "kept": r.get("kept_per_head")} for r in map(json.loads, lines)}


def test_swept_fidelity_equals_single_runs(tmp_path):
    sweep_root, single_root = tmp_path / "sweep", tmp_path / "single"
    summary = run(_cfg("methods=[full,snapkv,lava]", "budgets=[64]", f"output_root={sweep_root}"))
    assert [r.new_samples for r in summary.runs] == [2, 2, 2]  # one essay and one code sample each
    # The sample loop's own wall time (what bench_fidelity_cost divides), inside the sweep's elapsed time.
    assert 0 < summary.samples_seconds < summary.elapsed_seconds
    meta = json.loads((summary.runs[0].run_dir / "run_meta.json").read_text())
    assert meta["timings"]["sweep_samples_seconds"] == pytest.approx(summary.samples_seconds, abs=1e-3)
    for swept in summary.runs:
        name = swept.run_dir.name.split("-")[0]
        budget = [] if name == "full" else ["budget=64"]
        single = run(_cfg(f"method={name}", *budget, f"output_root={single_root}"))
        assert single.run_dir.name == swept.run_dir.name  # the same run identity and folder name
        assert 0 < single.samples_seconds < single.elapsed_seconds
        a, b = _scores(swept.run_dir), _scores(single.run_dir)
        assert a.keys() == b.keys()
        for sample_id in a:
            assert a[sample_id]["kept"] == b[sample_id]["kept"]  # the same entries kept
            for metric in ("kl", "top1", "nll_delta", "attn_err"):
                assert a[sample_id][metric] == pytest.approx(b[sample_id][metric], rel=1e-4, abs=1e-6)
        if name == "full":
            assert all(s["kl"] < 1e-8 and s["top1"] == 1.0 for s in a.values())
        else:
            assert any(s["kl"] > 1e-6 for s in a.values())  # 300 tokens at budget 64: really compressed
