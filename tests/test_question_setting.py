"""The question-agnostic setting (``bench.question=agnostic``, docs/question.md): the context part is
prefilled and compressed alone, the question part is prefilled into the compressed cache after.

What the maths says, checked on the embedded SmolLM2-135M (fp32, greedy):
- a budget at least the context's length evicts nothing, so the method's tokens are the full cache's
  in the same setting, token for token;
- what an agnostic cache keeps of the context cannot depend on the question, which it has not seen
  (and in the aware setting it does: the control that shows this test can fail);
- a sweep (one context prefill, the question prefilled per cache) equals the single runs;
- an ``aware`` run keeps the folder (identity hash) it had before the setting existed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from eval.generation import greedy_generate
from eval.method_configs import build_named_method
from eval.run_folder import run_dir_for
from eval.runner import run

REPO = Path(__file__).resolve().parents[1]
NIAH = [
    "bench=niah",
    "bench.lengths=[700]",
    "bench.depths=[20,80]",
    "bench.max_new_tokens=12",
    "bench.min_new_tokens=1",
    "bench.question=agnostic",
    "progress=false",
]


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _records(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_aware_runs_keep_their_folders():
    """The hashes ``make run`` printed before ``bench.question`` existed (README, 2026-12-05)."""
    grid = ["bench=niah", "bench.lengths=[500,1000,1500,2000]", "bench.depths=[0,25,50,75,100]"]
    grid.append("bench.min_new_tokens=1")
    assert run_dir_for(_cfg(*grid, "method=snapkv", "budget=128")).name == "snapkv-b128-e4703467"
    assert run_dir_for(_cfg(*grid, "method=full")).name == "full-15ec8698"
    agnostic = run_dir_for(_cfg(*grid, "method=snapkv", "budget=128", "bench.question=agnostic")).name
    assert agnostic.startswith("snapkv-b128-agnostic-") and agnostic != "snapkv-b128-agnostic-e4703467"


def test_budget_beyond_the_context_gives_the_full_cache_tokens(tmp_path):
    full = run(_cfg(*NIAH, "method=full", f"output_root={tmp_path}"))
    reference = _records(full.run_dir)
    assert all(0 < r["context_tokens"] < r["prompt_tokens"] for r in reference.values())
    assert all(r["prompt_tokens"] < 1024 for r in reference.values())
    for method in ("snapkv", "lava", "adakv"):
        summary = run(_cfg(*NIAH, f"method={method}", "budget=1024", f"output_root={tmp_path}"))
        records = _records(summary.run_dir)
        assert records.keys() == reference.keys()
        for sample_id, record in records.items():
            assert record["prediction"] == reference[sample_id]["prediction"], (method, sample_id)
            assert record["new_tokens"] == reference[sample_id]["new_tokens"]


def test_agnostic_sweep_equals_single_runs(tmp_path):
    sweep = run(
        _cfg(*NIAH, "methods=[full,snapkv,lava]", "budgets=[64]", f"output_root={tmp_path / 'sweep'}")
    )
    assert [r.new_samples for r in sweep.runs] == [2, 2, 2]
    for swept in sweep.runs:
        name = swept.run_dir.name.split("-")[0]
        budget = [] if name == "full" else ["budget=64"]
        single = run(_cfg(*NIAH, f"method={name}", *budget, f"output_root={tmp_path / 'single'}"))
        assert single.run_dir.name == swept.run_dir.name and "-agnostic-" in single.run_dir.name
        a, b = _records(swept.run_dir), _records(single.run_dir)
        assert a.keys() == b.keys()
        for sample_id in a:
            for key in ("prediction", "new_tokens", "context_tokens", "kept_per_head"):
                assert a[sample_id].get(key) == b[sample_id].get(key), (name, sample_id, key)


def _kept_positions(cache) -> list[list[list[int]]]:
    return [[p.tolist() for p in layer.positions] for layer in cache.layers]


@pytest.mark.parametrize("method", ["snapkv", "lava"])
def test_kept_entries_depend_on_the_context_only(smollm2, method):
    model, tokenizer = smollm2
    from lava.attention import enable

    enable(model)
    essay = "The harbour town kept its lighthouse lit through every storm of the century. " * 30
    context = tokenizer.encode("Read the text.\n" + essay, add_special_tokens=True)
    questions = [
        tokenizer.encode(" What did the town keep lit? Answer:", add_special_tokens=False),
        tokenizer.encode(
            " Which century had storms, and how many ships sank? Answer:", add_special_tokens=False
        ),
    ]

    def kept(question: list[int], agnostic: bool):
        cache = build_named_method(method, 96).build_cache(model, max_new_tokens=2 + len(question))
        ids = context if agnostic else context + question
        greedy_generate(
            model,
            torch.tensor([ids]),
            max_new_tokens=2,
            stop_ids=[],
            cache=cache,
            question_ids=torch.tensor([question]) if agnostic else None,
        )
        assert cache.compressed
        return _kept_positions(cache)

    assert kept(questions[0], agnostic=True) == kept(questions[1], agnostic=True)
    # Control: with the question compressed along (aware), the kept entries follow the question.
    assert kept(questions[0], agnostic=False) != kept(questions[1], agnostic=False)


def test_a_bad_setting_is_refused_before_any_work(tmp_path):
    from tests.test_checks import assert_refused

    assert_refused(
        tmp_path, ["bench.question=maybe"], "bench.question=maybe is invalid; give aware or agnostic"
    )
    assert_refused(
        tmp_path,
        ["bench.question=maybe", "methods=[full,lava]", "budgets=[64]"],
        "bench.question=maybe is invalid",
    )
