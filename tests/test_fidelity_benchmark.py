"""bench=fidelity: samples, settings errors, and one run through the runner's teacher-forced branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.benchmarks.base import PromptContext
from eval.benchmarks.fidelity import Fidelity
from eval.benchmarks.fidelity.benchmark import windows
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ctx(smollm2_tokenizer):
    return PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500)


def test_windows_are_consecutive_and_non_overlapping():
    assert windows(list(range(10)), 3, 5) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_samples(ctx):
    bench = Fidelity(lengths=[300, 600], samples_per_source=2, continuation_tokens=7)
    samples = list(bench.samples(ctx))
    assert len(samples) == 2 * 2 * 2 and len({s.id for s in samples}) == 8
    assert {s.task for s in samples} == {"essays", "code"}
    for s in samples:
        assert len(s.meta["continuation_ids"]) == 8 and not s.chat
        assert abs(len(ctx.tokenizer.encode(s.prompt)) - s.meta["length"]) <= 2
    assert [s.prompt for s in bench.samples(ctx)] == [s.prompt for s in samples]
    assert bench.requested_prompt_tokens(ctx) == 607
    assert bench.headline_metric() == "kl" and bench.teacher_forced
    assert bench.lower_is_better == {"kl", "nll_delta", "attn_err"}


@pytest.mark.parametrize(
    "bad", [{"continuation_tokens": 0}, {"lengths": []}, {"samples_per_source": 0}, {"sources": ["poems"]}]
)
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(UserError):
        Fidelity(**bad)


def test_length_beyond_the_model_is_refused_before_any_work(ctx):
    with pytest.raises(UserError, match="max_prompt_tokens"):
        next(iter(Fidelity(lengths=[7480]).samples(ctx)))


def test_runner_teacher_forced_branch(tmp_path):
    from eval.runner import run

    overrides = [
        "bench=fidelity",
        "bench.lengths=[128]",
        "bench.samples_per_source=1",
        "bench.continuation_tokens=4",
        "method=snapkv",
        "budget=64",
        f"output_root={tmp_path}",
        "progress=false",
    ]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    summary = run(cfg)
    assert summary.num_samples == 2 and summary.headline_metric == "kl" and summary.score > 0
    records = [json.loads(line) for line in (summary.run_dir / "predictions.jsonl").read_text().splitlines()]
    for r in records:
        assert set(r["scores"]) == {"kl", "top1", "nll_delta", "attn_err"}
        assert len(r["attn_err_per_layer"]) == 30 and r["kept_entries"] > 0
    scores = json.loads((summary.run_dir / "scores.json").read_text())
    assert scores["lower_is_better"] == ["attn_err", "kl", "nll_delta"]
    assert len(scores["attn_err_per_layer"]) == 30
    assert (summary.run_dir / "attn_err_per_layer.csv").exists()
