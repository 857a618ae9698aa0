"""eval.claims: verdicts from paired comparisons, checked on runs whose differences are known."""

from __future__ import annotations

import pytest
from run_folders import FIDELITY, make_run, per_sample

from eval.claims import (
    CONTRADICTED,
    NOT_SEPARABLE,
    NOT_TESTED,
    SUPPORTED,
    compare,
    head_budget_claim,
    judge_claims,
    layer_budget_claim,
    write_claims,
)
from eval.collect import find_runs
from eval.tables import build_result_tables

N = 20


def niah(root, values_by_method, budget=64):
    for method, values in values_by_method.items():
        make_run(
            root,
            bench="niah",
            method=method,
            budget=budget,
            scores=per_sample("niah", values, "recall"),
            headline="recall",
        )


def test_head_budgets_supported_when_separated(tmp_path):
    niah(tmp_path, {"lava_head_only": [1] * N, "snapkv": [0] * N, "lava_layer_only": [1] * (N - 2) + [0, 0]})
    claim = head_budget_claim(find_runs(tmp_path))
    by_rival = {c.b: c for c in claim.comparisons}
    assert by_rival["snapkv"].diff == pytest.approx(1.0) and by_rival["snapkv"].separated
    assert by_rival["lava_layer_only"].diff == pytest.approx(2 / N)  # not separated at n=20
    assert claim.verdict == SUPPORTED
    assert any("ruler" in m for m in claim.missing) and any("infinitebench" in m for m in claim.missing)


def test_contradicted_and_not_separable(tmp_path):
    niah(tmp_path / "c", {"lava_head_only": [0] * N, "snapkv": [1] * N})
    assert head_budget_claim(find_runs(tmp_path / "c")).verdict == CONTRADICTED
    same = [1, 0] * (N // 2)
    niah(tmp_path / "s", {"lava_head_only": same, "snapkv": same[::-1], "lava_layer_only": same})
    assert head_budget_claim(find_runs(tmp_path / "s")).verdict == NOT_SEPARABLE


def test_lower_is_better_is_oriented_and_only_code_tasks_count(tmp_path):
    for method, kl in (("lava_layer_only", 0.1), ("snapkv", 0.5), ("lava_head_only", 0.3)):
        scores = per_sample("code", [kl] * N, "kl") + per_sample("essay", [1.0 - kl] * N, "kl")
        make_run(
            tmp_path,
            bench="fidelity",
            method=method,
            budget=64,
            scores=scores,
            headline="kl",
            bench_target=FIDELITY,
        )
    claim = layer_budget_claim(find_runs(tmp_path))
    diffs = {c.b: c.diff for c in claim.comparisons}
    assert diffs == pytest.approx({"snapkv": 0.4, "lava_head_only": 0.2})  # positive: layer-only lower KL
    assert {c.tasks for c in claim.comparisons} == {"code"} and claim.verdict == SUPPORTED


def test_pairs_only_shared_samples(tmp_path):
    niah(tmp_path, {"lava_head_only": [1, 1, 1, 0], "snapkv": [0, 1, 1]})
    a, b = sorted(find_runs(tmp_path), key=lambda r: r.method)
    comparison = compare(a, b)
    assert comparison.n == 3 and comparison.diff == pytest.approx(1 / 3)
    assert comparison.a_mean == pytest.approx(1.0) and comparison.b_mean == pytest.approx(2 / 3)


def test_lava_best_needs_the_best_mean_rank(tmp_path):
    niah(tmp_path, {"lava": [1] * N, "snapkv": [0] * N, "adakv": [0] * N})
    claims = judge_claims(build_result_tables(tmp_path))
    assert claims[0].verdict == SUPPORTED and claims[0].comparisons[0].b in {"snapkv", "adakv"}
    make_run(tmp_path, bench="other", method="lava", budget=64, scores=per_sample("t", [0] * N))
    make_run(tmp_path, bench="other", method="snapkv", budget=64, scores=per_sample("t", [0] * (N - 1) + [1]))
    make_run(tmp_path, bench="other2", method="lava", budget=64, scores=per_sample("t", [0] * N))
    make_run(
        tmp_path, bench="other2", method="snapkv", budget=64, scores=per_sample("t", [0] * (N - 1) + [1])
    )
    claim = judge_claims(build_result_tables(tmp_path))[0]
    # lava separated on niah, unseparated losses elsewhere: mean rank (1+2+2)/3 > snapkv's (2+1+1)/3
    assert claim.blocked and claim.verdict == NOT_SEPARABLE


def test_write_claims_without_runs_says_not_tested(tmp_path):
    paths = write_claims(build_result_tables(tmp_path, "cpu"), tmp_path / "out")
    text = paths[0].read_text()
    assert [c.verdict for c in judge_claims(build_result_tables([]))] == [NOT_TESTED] * 3
    assert text.count(f"**{NOT_TESTED}**") == 3 and "profile: cpu" in text


def test_extraction_claim_counts_only_ruler_retrieval_tasks(tmp_path):
    def scores(needle, vt):
        return per_sample("niah_single_1", [needle] * N) + per_sample("vt", [vt] * N)

    for method, needle, vt in (("lava_head_only", 50, 100), ("snapkv", 50, 0), ("lava_layer_only", 50, 0)):
        make_run(tmp_path, bench="ruler", method=method, budget=64, scores=scores(needle, vt))
    claim = head_budget_claim(find_runs(tmp_path))
    assert {c.tasks for c in claim.comparisons} == {"retrieval"}
    assert all(c.diff == 0 for c in claim.comparisons) and claim.verdict == NOT_SEPARABLE
