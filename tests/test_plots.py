"""eval.plots: which figures exist, the numbers they draw, and byte-identical reruns."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from run_folders import make_run, per_sample, toy_root

from eval.collect import find_runs, kept_mean
from eval.frames import read_table
from eval.plots import BUDGET_METHODS, budget_methods, layer_errors, write_figures
from eval.tables import build_result_tables, write_tables

GRID = [(length, depth) for length in (1000, 2000) for depth in (0, 100)]


def niah_root(root, with_errors=False):
    meta = [{"length": n, "depth": d} for n, d in GRID]
    scores = [(f"niah_L{n}_D{d}", "niah", {"recall": 1.0}) for n, d in GRID]
    make_run(root, bench="niah", method="full", budget=None, scores=scores, headline="recall", meta=meta)
    kept = np.arange(4 * 3 * 2).reshape(4, 3, 2)  # samples x layers x KV heads
    for method in ("lava", "snapkv"):
        for budget in (8, 16):
            make_run(
                root,
                bench="niah",
                method=method,
                budget=budget,
                scores=scores,
                headline="recall",
                meta=meta,
                kept=kept,
            )
    if with_errors:
        for method, scale in (("lava", 1.0), ("snapkv", 2.0)):
            fid = [
                (f"f{i}", "code", {"kl": 0.1, "attn_err_per_layer": [scale * i, scale * (i + 1)]})
                for i in range(3)
            ]
            make_run(root, bench="fidelity", method=method, budget=8, scores=fid, headline="kl")
    return root


def test_figures_written_and_rerun_identical(tmp_path):
    root = niah_root(tmp_path / "runs", with_errors=True)
    perf = tmp_path / "perf.csv"
    perf.write_text("length,method,budget,compressed,decode_speedup,memory_ratio\n"
                    "1024,full,,False,1,1\n1024,lava,8,True,2.0,0.25\n1024,snapkv,8,True,2.5,0.25\n")  # fmt: skip
    first = write_figures(build_result_tables(root), tmp_path / "f1", perf_csv=perf)
    second = write_figures(build_result_tables(root), tmp_path / "f2", perf_csv=perf)
    assert sorted(p.name for p in first) == sorted([
        "niah_vs_budget.png", "niah_grid.png", "niah_budget_heads.png", "niah_budget_layers.png",
        "fidelity_vs_budget.png", "fidelity_attn_err.png", "summary_ranks.png", "perf.png",
    ])  # fmt: skip
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"Software" not in a.read_bytes()  # no matplotlib version stamp


def test_optional_figures_skipped_without_their_data(tmp_path):
    written = write_figures(build_result_tables(toy_root(tmp_path / "runs")), tmp_path / "f")
    assert sorted(p.name for p in written) == ["fid_vs_budget.png", "summary_ranks.png", "toy_vs_budget.png"]


def test_kept_and_error_means_over_samples(tmp_path):
    runs = {(r.bench, r.method, r.budget): r for r in find_runs(niah_root(tmp_path, with_errors=True))}
    kept = kept_mean(runs[("niah", "lava", 8)])
    expected = np.array(
        [[np.mean([s * 6 + layer * 2 + head for s in range(4)]) for head in range(2)] for layer in range(3)]
    )
    assert kept.shape == (3, 2) and np.allclose(kept, expected)
    assert kept_mean(runs[("niah", "full", None)]) is None
    assert layer_errors(runs[("fidelity", "snapkv", 8)]) == pytest.approx(
        [2.0, 4.0]
    )  # mean of 2i, 2(i+1), i=0..2
    assert layer_errors(runs[("niah", "lava", 8)]) is None
    make_run(tmp_path / "x", bench="toy", method="lava", budget=8, scores=per_sample("a", [1]))
    assert layer_errors(find_runs(tmp_path / "x")[0]) is None


def test_budget_table_written_beside_the_bench_table(tmp_path):
    written = write_tables(build_result_tables(niah_root(tmp_path / "runs")), tmp_path / "t")
    assert "niah_budget.csv" in {p.name for p in written}
    frame = read_table(tmp_path / "t" / "niah_budget.csv").set_index(["method", "budget", "layer", "head"])
    assert len(frame) == 2 * 2 * 3 * 2  # methods x budgets x layers x heads; full has no kept array
    assert frame.loc[("lava", 16, 1, 0), "kept"] == pytest.approx(11.0)  # mean of s*6 + 2 over s = 0..3
    assert frame.loc[("lava", 16, 1, 0), "share"] == pytest.approx(11.0 / 16)


def test_budget_rows_from_the_registry_keep_todays_methods_and_order():
    # the four rows the figure had before it read the registry, in the same order; methods added
    # since with a scorer of their own on a non-uniform allocator (adakv_expected_attention) add rows
    assert [m for m in BUDGET_METHODS if m in ("lava", "adakv", "cake", "pyramidkv")] == [
        "lava",
        "adakv",
        "cake",
        "pyramidkv",
    ]
    assert BUDGET_METHODS[0] == "lava" and not {"lava_layer_only", "lava_head_only", "cake_cascading"} & set(
        BUDGET_METHODS
    )


def test_a_new_allocation_rule_gets_a_row_and_a_variant_does_not(monkeypatch):
    import eval.plots as plots

    snapkv_scorer = {"_target_": "lava.scorers.SnapKVScorer", "kernel": 7, "pooling": "max", "gqa": "mean"}
    lava_scorer = {"_target_": "lava.scorers.LavaScorer", "kernel": 7, "pooling": "max", "gqa": "max"}

    def node(scorer, layer, head, **head_args):
        return OmegaConf.create({"_target_": "lava.method.CompressionMethod", "scorer": scorer,
                                 "layer_allocator": {"_target_": f"lava.allocation.{layer}"},
                                 "head_allocator": {"_target_": f"lava.allocation.{head}", **head_args}})  # fmt: skip

    registry = {
        "full": OmegaConf.create({"name": "full"}),
        "aaa_new": node(snapkv_scorer, "ProportionalLayerBudget", "UniformHeadBudget"),
        "lava": node(lava_scorer, "EntropyLayerBudget", "FlatHeadBudget", alpha=0.2),
        "lava_upstream_floor": node(lava_scorer, "EntropyLayerBudget", "FlatHeadBudget", floor="upstream"),
        "lava_heads": node(lava_scorer, "UniformLayerBudget", "FlatHeadBudget"),
        "snapkv": node(snapkv_scorer, "UniformLayerBudget", "UniformHeadBudget"),
        "zzz_flat": node(snapkv_scorer, "UniformLayerBudget", "FlatHeadBudget"),
    }
    monkeypatch.setattr(plots, "display_order", lambda: list(registry))
    monkeypatch.setattr(plots, "method_node", registry.__getitem__)
    # lava first; its parameter variant and its heads-only mix re-use its rule; snapkv is uniform;
    # zzz_flat has lava's head allocator but another scorer: a rule of its own
    assert budget_methods() == ("lava", "aaa_new", "zzz_flat")
