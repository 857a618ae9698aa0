"""Budget figures and the budget table on a hybrid model: sliding-window layers are not a budget share.

A synthetic run folder of a 4-layer model whose layers 0 and 2 are sliding windows (the records'
``global_layers`` is [1, 3], as lava.cache's report() writes it): those layers hold their window (15
entries per head) whatever the budget, so their share is left out (NaN, grey, labelled "sliding")
and the global layers' shares are the hand-computed kept / budget. Records whose ``global_layers``
lists every layer (a model without sliding layers) write exactly what records without the field do.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from run_folders import make_run

import eval.plots as plots
from eval.collect import find_runs
from eval.frames import read_header, read_table
from eval.tables import budget_frame, build_result_tables, sliding_layers, write_tables

BUDGET = 8
GLOBAL = [1, 3]
WINDOW_KEPT = 15  # a sliding layer's entries per head (window 16, minus the new token's own slot)
# samples x layers x KV heads; the global layers' means are 4 and 12 (layer 1), 10 and 4 (layer 3)
KEPT = np.array(
    [
        [[WINDOW_KEPT] * 2, [2, 10], [WINDOW_KEPT] * 2, [12, 4]],
        [[WINDOW_KEPT] * 2, [6, 14], [WINDOW_KEPT] * 2, [8, 4]],
    ]
)
GLOBAL_SHARE = {(1, 0): 4 / 8, (1, 1): 12 / 8, (3, 0): 10 / 8, (3, 1): 4 / 8}


def _add_global_layers(run_dir, layers):
    """Give every record of ``run_dir`` a ``global_layers`` field (the compressed cache's report())."""
    path = run_dir / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "global_layers": layers}) + "\n" for r in records))


def _root(tmp_path, global_layers):
    root = tmp_path / "runs"
    scores = [(f"s{i}", "niah", {"recall": 1.0}) for i in range(len(KEPT))]
    make_run(root, bench="niah", method="full", budget=None, scores=scores, headline="recall")
    for method in ("lava", "pyramidkv"):
        run_dir = make_run(
            root, bench="niah", method=method, budget=BUDGET, scores=scores, headline="recall", kept=KEPT
        )
        if global_layers is not None:
            _add_global_layers(run_dir, global_layers)
    return root


def test_sliding_layers_come_from_the_records(tmp_path):
    runs = {r.method: r for r in find_runs(_root(tmp_path, GLOBAL))}
    assert sliding_layers(runs["lava"]) == [0, 2]
    assert sliding_layers(runs["full"]) == []  # no kept entries: nothing to tell apart


def test_budget_frame_leaves_sliding_layers_out_of_the_share(tmp_path):
    frame = budget_frame(find_runs(_root(tmp_path, GLOBAL)))
    assert list(frame.columns) == ["method", "budget", "layer", "head", "kept", "share", "layer_kind"]
    assert len(frame) == 2 * 4 * 2  # methods x layers x heads (the full cache has no kept array)
    for row in frame.itertuples():
        if row.layer in GLOBAL:
            assert row.layer_kind == "global"
            assert row.share == pytest.approx(GLOBAL_SHARE[(row.layer, row.head)])
        else:
            assert row.layer_kind == "sliding" and np.isnan(row.share)
            assert row.kept == WINDOW_KEPT  # what the layer holds is still reported

    out = tmp_path / "tables"
    write_tables(build_result_tables(tmp_path / "runs"), out)
    written = read_table(out / "niah_budget.csv").set_index(["method", "budget", "layer", "head"])
    assert np.isnan(written.loc[("lava", BUDGET, 0, 1), "share"])  # written empty
    assert written.loc[("lava", BUDGET, 0, 1), "layer_kind"] == "sliding"
    assert written.loc[("pyramidkv", BUDGET, 1, 1), "share"] == pytest.approx(12 / 8)
    assert any("sliding" in line for line in read_header(out / "niah_budget.csv"))


@pytest.mark.parametrize("global_layers", [None, [0, 1, 2, 3]])
def test_models_without_sliding_layers_write_the_same_table(tmp_path, global_layers):
    """No ``global_layers`` in the records and every layer global give one table, with the old columns."""
    frame = budget_frame(find_runs(_root(tmp_path, global_layers)))
    assert list(frame.columns) == ["method", "budget", "layer", "head", "kept", "share"]
    assert frame["share"].tolist() == pytest.approx((frame["kept"] / BUDGET).tolist())
    write_tables(build_result_tables(tmp_path / "runs"), tmp_path / "tables")
    baseline = tmp_path / "baseline"
    write_tables(build_result_tables(_root(baseline, None)), baseline / "tables")
    assert (tmp_path / "tables" / "niah_budget.csv").read_bytes() == (
        baseline / "tables" / "niah_budget.csv"
    ).read_bytes()


@pytest.fixture
def drawn(monkeypatch):
    """The figures the budget plots build, kept open instead of saved."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    yield figures
    for fig in figures:
        plots.plt.close(fig)


def test_heatmap_greys_the_sliding_layers(tmp_path, drawn):
    runs = find_runs(_root(tmp_path, GLOBAL))
    plots.budget_heatmaps(runs, tmp_path / "heads.png")
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2  # lava and pyramidkv at one budget
    for ax in panels:
        (image,) = ax.images
        cells = np.ma.filled(image.get_array().astype(float), np.nan)  # (kv_heads, layers)
        assert np.isnan(cells[:, [0, 2]]).all()
        for (layer, head), share in GLOBAL_SHARE.items():
            assert cells[head, layer] == pytest.approx(share)
        assert image.norm.vmax == pytest.approx(12 / 8)  # the largest global share, not 15 / 8
        assert image.cmap.get_bad()[:3] == pytest.approx((0.827, 0.827, 0.827), abs=1e-3)  # lightgrey
        assert [t.get_text() for t in ax.texts] == ["sliding", "sliding"]
    assert "sliding" in fig._suptitle.get_text()


def test_layer_lines_skip_and_shade_the_sliding_layers(tmp_path, drawn):
    runs = find_runs(_root(tmp_path, GLOBAL))
    plots.layer_budget_lines(runs, tmp_path / "layers.png")
    (fig,) = drawn
    ax = fig.axes[0]
    lines = [line for line in ax.lines if line.get_label() in ("lava", "pyramidkv")]
    assert len(lines) == 2
    for line in lines:
        # layer total / (budget x heads): layer 1 (4 + 12) / 16, layer 3 (10 + 4) / 16
        assert list(line.get_xdata()) == GLOBAL
        assert list(line.get_ydata()) == pytest.approx([1.0, 0.875])
    assert len(ax.patches) == 2  # layers 0 and 2: two separate blocks
    labels = [h.get_label() for h in ax.get_legend_handles_labels()[0]]
    assert labels.count("sliding (not compressed)") == 1
