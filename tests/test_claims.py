"""eval.claims: verdicts from paired comparisons, checked on runs whose differences are known.


Verdicts are per setting (aware / agnostic, and the ratio-unit settings), so the tests written
before settings existed read ``claim.verdict("aware")`` where they read ``claim.verdict``: their runs
are all aware.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
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
from eval.collect import find_runs, split_bench
from eval.frames import read_table
from eval.tables import build_result_tables

N = 20


def as_setting(run_dir: Path, agnostic: bool = False, ratio: float | None = None) -> Path:
    """Turn a folder written by make_run into a question-agnostic and/or compression-ratio run,
    config and folder name as the run core writes them (docs/question.md)."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    method, size, digest = run_dir.name.rsplit("-", 2)
    if agnostic:
        config["bench"]["question"] = "agnostic"
    if ratio is not None:
        config["compression_ratio"] = ratio
        config.pop("budget")
        size = f"r{ratio}"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    name = f"{method}-{size}{'-agnostic' if agnostic else ''}-{digest}"
    return run_dir.rename(run_dir.with_name(name))


def niah(root, values_by_method, budget=64, agnostic=False, ratio=None):
    for method, values in values_by_method.items():
        run_dir = make_run(
            root,
            bench="niah",
            method=method,
            budget=budget,
            scores=per_sample("niah", values, "recall"),
            headline="recall",
            digest="0123abcd" if not agnostic else "dcba3210",  # aware and agnostic folders side by side
        )
        as_setting(run_dir, agnostic, ratio)


def test_head_budgets_supported_when_separated(tmp_path):
    niah(tmp_path, {"lava_head_only": [1] * N, "snapkv": [0] * N, "lava_layer_only": [1] * (N - 2) + [0, 0]})
    claim = head_budget_claim(find_runs(tmp_path))
    by_rival = {c.b: c for c in claim.comparisons}
    assert by_rival["snapkv"].diff == pytest.approx(1.0) and by_rival["snapkv"].separated
    assert by_rival["lava_layer_only"].diff == pytest.approx(2 / N)  # not separated at n=20
    assert claim.verdict("aware") == SUPPORTED
    assert any("ruler" in m for m in claim.missing) and any("infinitebench" in m for m in claim.missing)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_head_budgets_are_not_judged_on_one_kv_head(tmp_path, kv_heads):
    """With one KV head per layer a head allocator has nothing to divide: lava_head_only beating
    snapkv there is their scorers' difference, not head budgets' (Gemma 3 270M's NIAH runs made
    claim (c) "supported" this way). Two KV heads: the same runs are compared and support it."""
    for method, values in {"lava_head_only": [1] * N, "snapkv": [0] * N, "lava_layer_only": [1] * N}.items():
        make_run(
            tmp_path,
            bench="niah",
            method=method,
            budget=64,
            scores=per_sample("niah", values, "recall"),
            headline="recall",
            kept=np.full((N, 3, kv_heads), 64.0),  # (samples, layers, KV heads)
        )
    claim = head_budget_claim(find_runs(tmp_path))
    if kv_heads == 1:
        assert claim.comparisons == [] and claim.verdicts == {}
        assert claim.notes == [
            "left out, niah (all) on tiny: one KV head per layer, so head budgets have nothing to allocate"
        ]
        assert not any(m.startswith("niah") for m in claim.missing)  # run, not missing
    else:
        assert claim.verdict("aware") == SUPPORTED and claim.notes == []


def test_contradicted_and_not_separable(tmp_path):
    niah(tmp_path / "c", {"lava_head_only": [0] * N, "snapkv": [1] * N})
    assert head_budget_claim(find_runs(tmp_path / "c")).verdict("aware") == CONTRADICTED
    same = [1, 0] * (N // 2)
    niah(tmp_path / "s", {"lava_head_only": same, "snapkv": same[::-1], "lava_layer_only": same})
    assert head_budget_claim(find_runs(tmp_path / "s")).verdict("aware") == NOT_SEPARABLE


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
    assert {c.tasks for c in claim.comparisons} == {"code"} and claim.verdict("aware") == SUPPORTED


def test_pairs_only_shared_samples(tmp_path):
    niah(tmp_path, {"lava_head_only": [1, 1, 1, 0], "snapkv": [0, 1, 1]})
    a, b = sorted(find_runs(tmp_path), key=lambda r: r.method)
    comparison = compare(a, b)
    assert comparison.n == 3 and comparison.diff == pytest.approx(1 / 3)
    assert comparison.a_mean == pytest.approx(1.0) and comparison.b_mean == pytest.approx(2 / 3)


def test_lava_best_needs_the_best_mean_rank(tmp_path):
    niah(tmp_path, {"lava": [1] * N, "snapkv": [0] * N, "adakv": [0] * N})
    claims = judge_claims(build_result_tables(tmp_path))
    assert claims[0].verdicts == {"aware": SUPPORTED} and claims[0].comparisons[0].b in {"snapkv", "adakv"}
    make_run(tmp_path, bench="other", method="lava", budget=64, scores=per_sample("t", [0] * N))
    make_run(tmp_path, bench="other", method="snapkv", budget=64, scores=per_sample("t", [0] * (N - 1) + [1]))
    make_run(tmp_path, bench="other2", method="lava", budget=64, scores=per_sample("t", [0] * N))
    make_run(
        tmp_path, bench="other2", method="snapkv", budget=64, scores=per_sample("t", [0] * (N - 1) + [1])
    )
    claim = judge_claims(build_result_tables(tmp_path))[0]
    # lava separated on niah, unseparated losses elsewhere: mean rank (1+2+2)/3 > snapkv's (2+1+1)/3
    assert claim.blocked == {"aware": "lava is not first by mean rank at budget 64"}
    assert claim.verdict("aware") == NOT_SEPARABLE


def test_write_claims_without_runs_says_not_tested(tmp_path):
    paths = write_claims(build_result_tables(tmp_path, "cpu"), tmp_path / "out")
    text = paths[0].read_text()
    # No setting has runs: no verdict per setting, one "not tested" per claim.
    assert [c.verdicts for c in judge_claims(build_result_tables([]))] == [{}] * 3
    assert text.count(f"**{NOT_TESTED}**") == 3 and "profile: cpu" in text


def test_extraction_claim_counts_only_ruler_retrieval_tasks(tmp_path):
    def scores(needle, vt):
        return per_sample("niah_single_1", [needle] * N) + per_sample("vt", [vt] * N)

    for method, needle, vt in (("lava_head_only", 50, 100), ("snapkv", 50, 0), ("lava_layer_only", 50, 0)):
        make_run(tmp_path, bench="ruler", method=method, budget=64, scores=scores(needle, vt))
    claim = head_budget_claim(find_runs(tmp_path))
    assert {c.tasks for c in claim.comparisons} == {"retrieval"}
    assert all(c.diff == 0 for c in claim.comparisons) and claim.verdict("aware") == NOT_SEPARABLE


def test_split_bench_reads_back_the_setting_suffixes():
    assert split_bench("niah") == ("niah", "aware", "budget")
    assert split_bench("niah_agnostic") == ("niah", "agnostic", "budget")
    assert split_bench("ruler_ratio") == ("ruler", "aware", "ratio")
    assert split_bench("ruler_ratio_agnostic") == ("ruler", "agnostic", "ratio")


def two_settings(root):
    """NIAH at budget 64: head-only separated above both rivals when aware; when agnostic the
    three methods differ only in which samples they get right, so every mean difference is 0."""
    niah(root, {"lava_head_only": [1] * N, "snapkv": [0] * N, "lava_layer_only": [0] * N})
    alternate = [1, 0] * (N // 2)
    niah(
        root,
        {"lava_head_only": alternate, "snapkv": alternate[::-1], "lava_layer_only": [0, 1, 1, 0] * (N // 4)},
        agnostic=True,
    )


def test_settings_are_judged_apart(tmp_path):
    two_settings(tmp_path)
    claim = head_budget_claim(find_runs(tmp_path))
    assert claim.verdicts == {"aware": SUPPORTED, "agnostic": NOT_SEPARABLE}
    aware, agnostic = claim.in_setting("aware"), claim.in_setting("agnostic")
    assert {c.b: c.diff for c in aware} == pytest.approx({"snapkv": 1.0, "lava_layer_only": 1.0})
    assert {c.b: c.diff for c in agnostic} == pytest.approx({"snapkv": 0.0, "lava_layer_only": 0.0})
    # Both settings name the benchmark without its suffix; the setting is a field of its own.
    assert {(c.bench, c.setting, c.unit) for c in agnostic} == {("niah", "agnostic", "budget")}
    assert all(c.half_width > 0 and not c.separated for c in agnostic)
    # Only ruler and infinitebench are missing, in the one setting each of the two has runs in.
    assert sorted(m.split(":")[0] for m in claim.missing) == sorted(
        f"{bench} (retrieval) in the {setting} setting"
        for bench in ("ruler", "infinitebench")
        for setting in ("aware", "agnostic")
    )


def test_not_separable_states_the_detectable_difference(tmp_path):
    two_settings(tmp_path)
    # A second agnostic budget: snapkv identical to head-only (an interval of zero width, no spread
    # to measure by, left out), layer-only differing from it by +-1 on half the samples.
    alternate = [1, 0] * (N // 2)
    niah(
        tmp_path,
        {"lava_head_only": alternate, "snapkv": alternate, "lava_layer_only": [1, 1, 0, 0] * (N // 4)},
        budget=128,
        agnostic=True,
    )
    claim = head_budget_claim(find_runs(tmp_path))
    agnostic = claim.in_setting("agnostic")
    assert claim.verdict("agnostic") == NOT_SEPARABLE and len(agnostic) == 4
    for c in agnostic:
        assert c.half_width == pytest.approx((c.high - c.low) / 2)
    widths = sorted((c.high - c.low) / 2 for c in agnostic)
    assert widths[0] == 0.0 and 0 < widths[1] and widths[2] < widths[3]  # the median is not the max
    median = widths[2]  # the middle one of the three intervals with a width
    assert claim.detectable("agnostic") == {"niah": pytest.approx(median)}
    text = claim.verdict_text("agnostic")
    assert (
        text == f"**{NOT_SEPARABLE}** (differences smaller than {median:.3f} on niah could not be detected)"
    )
    assert claim.verdict_text("aware") == f"**{SUPPORTED}**"  # separated: no detectable clause


def test_not_separable_without_spread_says_so(tmp_path):
    # Identical runs: every paired difference is 0, the interval has no width to state.
    same = [1, 0] * (N // 2)
    niah(tmp_path, {"lava_head_only": same, "snapkv": same, "lava_layer_only": same}, agnostic=True)
    claim = head_budget_claim(find_runs(tmp_path))
    assert claim.verdicts == {"agnostic": NOT_SEPARABLE} and claim.detectable("agnostic") == {"niah": None}
    assert claim.verdict_text("agnostic") == (
        f"**{NOT_SEPARABLE}** (no spread on niah: every shared sample gave the same difference)"
    )


def test_claims_files_carry_the_setting_and_the_half_width(tmp_path):
    two_settings(tmp_path / "runs")
    md, csv = write_claims(build_result_tables(tmp_path / "runs"), tmp_path / "out")
    frame = read_table(csv)
    c_rows = frame[frame["claim"] == "c"]
    assert list(c_rows["setting"]) == ["aware", "aware", "agnostic", "agnostic"]
    assert set(c_rows["bench"]) == {"niah"} and set(c_rows["unit"]) == {"budget"}
    verdicts = dict(zip(c_rows["setting"], c_rows["verdict"]))
    assert verdicts == {"aware": SUPPORTED, "agnostic": NOT_SEPARABLE}
    # written with 4 decimals: the half-width agrees with its interval to rounding
    assert (c_rows["half_width"] - (c_rows["high"] - c_rows["low"]) / 2).abs().max() < 2e-4
    assert (c_rows.loc[c_rows["setting"] == "agnostic", "half_width"] > 0).all()
    assert ",64,lava_head_only," in csv.read_text()  # a budget stays an integer
    text = md.read_text()
    section = text.split("## (c)")[1]
    assert "- aware: **supported**" in section
    assert f"- agnostic: **{NOT_SEPARABLE}** (differences smaller than " in section
    assert "| setting | bench |" in section and "| agnostic | niah | all | 64 |" in section
    # (a) and (b) have no runs in either setting (no lava, no generation benchmark): one "not
    # tested" each, no per-setting lines
    assert f"**{NOT_TESTED}**" in text.split("## (b)")[1].split("## (c)")[0]
    assert text.count(f"**{NOT_TESTED}**") == 2 and "- aware: **not tested**" not in text


def test_ratio_runs_are_judged_in_their_own_setting(tmp_path):
    # lava separated above snapkv at ratio 0.25, behind it (not separated) at 0.5.
    niah(tmp_path, {"lava": [1] * N, "snapkv": [0] * N}, ratio=0.25)
    niah(tmp_path, {"lava": [0] * N, "snapkv": [0] * (N - 1) + [1]}, ratio=0.5)
    # Budget runs of the same setting where lava is separated behind: a verdict of their own.
    niah(tmp_path, {"lava": [0] * N, "snapkv": [1] * N}, budget=64)
    claim = judge_claims(build_result_tables(tmp_path))[0]
    assert claim.settings == ["aware", "aware (ratio)"]
    ratio = claim.in_setting("aware (ratio)")
    assert sorted(c.budget for c in ratio) == [0.25, 0.5] and {c.unit for c in ratio} == {"ratio"}
    # Ranked per ratio (not pooled into one budget): lava is first at 0.25 and second at 0.5.
    assert claim.blocked == {
        "aware": "lava is not first by mean rank at budget 64",
        "aware (ratio)": "lava is not first by mean rank at ratio 0.5",
    }
    assert claim.verdicts == {"aware": CONTRADICTED, "aware (ratio)": NOT_SEPARABLE}
    assert any(n.startswith("aware (ratio), ratio 0.25: lava's mean rank") for n in claim.notes)
