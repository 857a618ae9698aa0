"""The figures of results/ (matplotlib, headless), drawn from the report's :class:`ResultTables`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from hydra.utils import get_class  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from eval.collect import AGNOSTIC_SUFFIX, FULL_METHOD, RATIO_SUFFIX, Run, kept_mean  # noqa: E402
from eval.heatmap import NIAH_CMAP, save_figure  # noqa: E402
from eval.method_configs import display_order, is_full, method_node  # noqa: E402
from eval.tables import (  # noqa: E402
    AVERAGE,
    BenchTable,
    ResultTables,
    kept_share,
    method_rank,
    per_model,
    sliding_layers,
    summary_groups,
    summary_table,
)
from lava.allocation import UniformHeadBudget, UniformLayerBudget  # noqa: E402

# ------------------------------------------------------------------------- results/figures
# One colour per method in every figure (tab10 order), the full cache in black.
METHOD_COLORS = {
    "streamingllm": "#7f7f7f",
    "snapkv": "#1f77b4",
    "pyramidkv": "#ff7f0e",
    "adakv": "#2ca02c",
    "cake": "#9467bd",
    "cake_cascading": "#c5b0d5",
    "lava": "#d62728",
    "lava_layer_only": "#e377c2",
    "lava_head_only": "#8c564b",
    "full": "#000000",
}
# The paper's method leads the budget figure's rows; the others follow in display order.
PAPER_METHOD = "lava"
_UNIFORM = {"layer_allocator": UniformLayerBudget, "head_allocator": UniformHeadBudget}


def _allocation(name: str) -> tuple[dict[str, object], dict[str, type]]:
    """A method's scorer config and its allocator classes, read from ``configs/method/<name>.yaml``."""
    node = method_node(name)
    scorer = OmegaConf.to_container(node.scorer, resolve=False)
    return scorer, {slot: get_class(node[slot]._target_) for slot in _UNIFORM}


def budget_methods() -> tuple[str, ...]:
    """The rows of the budget heatmaps: every allocation rule of the registry once.

    A method is a row when some of its budgets are not uniform (an allocator that is not the
    uniform one), unless it re-uses a row's rule: the same scorer config and, per allocator, that
    row's allocator class or the uniform one. The figure shows where each rule puts the budget;
    such a method adds no rule, only a mix of a shown one with uniform parts or a different
    schedule. With today's registry that keeps lava, adakv, cake and pyramidkv (the figure's rows
    before the registry was read) and leaves out lava_layer_only and lava_head_only (lava's layer or
    head split with the other one uniform) and cake_cascading (cake's preference rule re-applied
    layer by layer). A new method with its own allocator or scorer appears without edits here.
    """
    names = [n for n in display_order() if not is_full(method_node(n))]
    names.sort(key=lambda n: n != PAPER_METHOD)  # stable: the paper's method first
    rows: list[tuple[str, dict[str, object], dict[str, type]]] = []
    for name in names:
        scorer, allocators = _allocation(name)
        if all(issubclass(cls, _UNIFORM[slot]) for slot, cls in allocators.items()):
            continue
        if any(
            scorer == shown_scorer
            and all(cls is shown[slot] or issubclass(cls, _UNIFORM[slot]) for slot, cls in allocators.items())
            for _, shown_scorer, shown in rows
        ):
            continue
        rows.append((name, scorer, allocators))
    return tuple(name for name, _, _ in rows)


BUDGET_METHODS = budget_methods()


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#17becf")


def score_vs_budget(table: BenchTable, path: Path) -> Path:
    """The benchmark average vs budget: a line and 95% band per method, the full cache as a level."""
    frame = table.frame
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    budgets = sorted(b for b in frame["budget"].dropna().unique())
    full = frame[frame["method"] == FULL_METHOD]
    if len(full):
        row = full.iloc[0]
        ax.axhline(row[AVERAGE], color="black", linestyle="--", linewidth=1.2, label="full cache")
        if pd.notna(row[f"{AVERAGE}_low"]):
            ax.axhspan(row[f"{AVERAGE}_low"], row[f"{AVERAGE}_high"], color="black", alpha=0.06)
    for method, part in frame[frame["method"] != FULL_METHOD].groupby("method", sort=False):
        part = part.sort_values("budget")
        x = part["budget"].astype(float).to_numpy()
        color = method_color(str(method))
        ax.plot(x, part[AVERAGE], marker="o", color=color, label=str(method))
        ax.fill_between(
            x,
            part[f"{AVERAGE}_low"].astype(float),
            part[f"{AVERAGE}_high"].astype(float),
            color=color,
            alpha=0.12,
        )
    ratios = RATIO_SUFFIX in table.bench
    if budgets and not ratios:
        ax.set_xscale("log", base=2)
        ax.set_xticks([float(b) for b in budgets], [str(int(b)) for b in budgets])
        ax.minorticks_off()
    direction = "lower is better" if table.lower_is_better else "higher is better"
    if ratios:
        ax.set_xlabel("compression ratio (fraction of the compressed entries removed)")
    else:
        ax.set_xlabel("budget (entries per KV head per layer)")
    ax.set_ylabel(f"{table.metric}{' (%)' if table.unit == 'percent' else ''}  [{direction}]")
    n = int(frame["num_samples"].max()) if len(frame) else 0
    ax.set_title(f"{table.bench}: average vs budget ({table.model}, up to {n} samples, 95% bands)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def summary_ranks(summary: pd.DataFrame, path: Path) -> Path:
    """Mean rank across benchmarks vs budget (1 = best), one line per compressed method."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    data = summary[summary["method"] != FULL_METHOD].dropna(subset=["mean rank"])
    budgets = sorted(data["budget"].dropna().unique())
    for method, part in data.groupby("method", sort=False):
        part = part.sort_values("budget")
        ax.plot(
            part["budget"].astype(float),
            part["mean rank"],
            marker="o",
            color=method_color(str(method)),
            label=str(method),
        )
    if budgets:
        ax.set_xscale("log", base=2)
        ax.set_xticks([float(b) for b in budgets], [str(int(b)) for b in budgets])
        ax.minorticks_off()
    ax.invert_yaxis()
    ax.set_xlabel("budget (entries per KV head per layer)")
    ax.set_ylabel("mean rank across benchmarks (1 = best)")
    ax.set_title("Summary: mean rank of each method across benchmarks")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return save_figure(fig, path)


def _grid(rows: int, cols: int, width: float, height: float) -> tuple[Any, np.ndarray]:
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.5, height * rows + 1.0), squeeze=False)
    return fig, axes


def _edge_labels(ax: Any, row: int, col: int, rows: int, ylabel: str, xlabel: str) -> None:
    """Axis labels on the grid's left column and bottom row only."""
    if col == 0:
        ax.set_ylabel(ylabel, fontsize=8)
    if row == rows - 1:
        ax.set_xlabel(xlabel, fontsize=8)


def _finish_grid(fig: Any, axes: np.ndarray, image: Any, title: str, path: Path, label: str) -> Path:
    """Title, a shared colour bar for the panels, and the PNG."""
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.92, 0.96))
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=label)
    return save_figure(fig, path)


def niah_grid(runs: Sequence[Run], path: Path) -> Path | None:
    """Depth x length heatmaps of the NIAH headline per sample: methods down, budgets across.

    The full cache, independent of the budget, takes the first row's first panel.
    """

    def cells(run: Run) -> pd.DataFrame:
        rows = [
            {"length": r["meta"]["length"], "depth": r["meta"]["depth"], "value": r["scores"][run.headline]}
            for r in run.records
            # Only NIAH-like records: other benchmarks record a length too (code completion), not a depth.
            if {"length", "depth"} <= set(r.get("meta") or {}) and run.headline in (r.get("scores") or {})
        ]
        return pd.DataFrame(rows)

    runs = [r for r in runs if len(cells(r))]
    if not runs:
        return None
    budgets = sorted({r.budget for r in runs if r.budget is not None}) or [None]
    methods = sorted({r.method for r in runs}, key=method_rank)
    by_key = {(r.method, r.budget): r for r in runs}
    # One budget (make run's comparison): the methods side by side in one row, so the title fits.
    across = len(budgets) == 1
    fig, axes = _grid(1, len(methods), 3.0, 2.2) if across else _grid(len(methods), len(budgets), 3.0, 2.2)
    image = None
    for i, method in enumerate(methods):
        for j, budget in enumerate(budgets):
            ax = axes[0][i] if across else axes[i][j]
            run = by_key.get((method, None if method == FULL_METHOD else budget))
            if run is None or (method == FULL_METHOD and j > 0):
                ax.axis("off")
                continue
            pivot = cells(run).pivot_table(index="depth", columns="length", values="value", aggfunc="mean")
            image = ax.imshow(pivot.to_numpy(), cmap=NIAH_CMAP, vmin=0.0, vmax=1.0, aspect="auto")
            ax.set_xticks(np.arange(pivot.shape[1]), [str(c) for c in pivot.columns], fontsize=7, rotation=45)
            ax.set_yticks(np.arange(pivot.shape[0]), [f"{d:g}" for d in pivot.index], fontsize=7)
            label = "full cache" if method == FULL_METHOD else f"{method} @ {budget}"
            ax.set_title(f"{label}: {np.nanmean(pivot.to_numpy()):.2f}", fontsize=9)
            _edge_labels(
                ax,
                0 if across else i,
                i if across else j,
                1 if across else len(methods),
                "depth %",
                "context length",
            )
    layout = f"budget {budgets[0]}" if across else "columns: budget"
    title = f"NIAH {runs[0].headline} by depth and length ({runs[0].model}); {layout}"
    return _finish_grid(fig, axes, image, title, path, runs[0].headline)


SLIDING_COLOR = "lightgrey"
SLIDING_LABEL = "sliding"


def _blocks(layers: Sequence[int]) -> list[tuple[int, int]]:
    """``(first, last)`` of each run of consecutive layers in sorted ``layers``."""
    blocks: list[tuple[int, int]] = []
    for layer in layers:
        if blocks and layer == blocks[-1][1] + 1:
            blocks[-1] = (blocks[-1][0], layer)
        else:
            blocks.append((layer, layer))
    return blocks


def budget_heatmaps(runs: Sequence[Run], path: Path, methods: Sequence[str] = BUDGET_METHODS) -> Path | None:
    """Where the budget goes: kept entries per layer x KV head over the budget, methods x budgets.

    A cell is the mean over samples of the head's kept entries divided by the budget, so 1 is the
    uniform share and the colour scale is comparable across budgets. A hybrid model's sliding-window
    layers (:func:`~eval.tables.sliding_layers`) keep their window whatever the budget: their
    columns are grey, labelled "sliding", and left out of the colour scale.
    """
    selected = [(r, kept_mean(r)) for r in runs if r.method in methods and r.budget is not None]
    selected = [(r, k) for r, k in selected if k is not None]
    if not selected:
        return None
    budgets = sorted({r.budget for r, _ in selected})
    rows = [m for m in methods if any(r.method == m for r, _ in selected)]
    by_key = {(r.method, r.budget): (r, kept_share(r, k)) for r, k in selected}
    vmax = max(float(np.nanmax(share)) for _, share in by_key.values())
    hybrid = any(sliding_layers(r) for r, _ in selected)
    fig, axes = _grid(len(rows), len(budgets), 4.2, 1.6)
    image = None
    for i, method in enumerate(rows):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            if (method, budget) not in by_key:
                ax.axis("off")
                continue
            run, share = by_key[(method, budget)]
            share = share.T  # (kv_heads, layers): layers along the page
            # NaN cells (sliding layers) take the colour map's "bad" colour
            cmap = matplotlib.colormaps["viridis"].with_extremes(bad=SLIDING_COLOR) if hybrid else "viridis"
            image = ax.imshow(share, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
            for first, last in _blocks(sliding_layers(run)):
                ax.text(
                    (first + last) / 2,
                    (share.shape[0] - 1) / 2,
                    SLIDING_LABEL,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="dimgray",
                    rotation=0 if last - first >= 2 else 90,
                )
            ax.set_yticks(np.arange(share.shape[0]), [str(h) for h in range(share.shape[0])], fontsize=7)
            ax.set_xticks(
                np.arange(0, share.shape[1], 5), [str(x) for x in range(0, share.shape[1], 5)], fontsize=7
            )
            ax.set_title(f"{method} @ {budget}", fontsize=9)
            _edge_labels(ax, i, j, len(rows), "KV head", "layer")
    title = f"Kept entries per layer and KV head / budget (mean over samples, {selected[0][0].bench})"
    if hybrid:
        title += "\ngrey: sliding-window layers (their rolling window, not compressed)"
    return _finish_grid(fig, axes, image, title, path, "kept / budget")


def layer_curves(
    curves: Sequence[tuple[Run, np.ndarray]],
    path: Path,
    ylabel: str,
    title: str,
    reference: float | None = None,
) -> Path | None:
    """One value per layer for each run: a line per method, a panel per budget (None without curves).

    NaN values (a sliding layer's budget share) are skipped, the line joining the layers on either
    side; a hybrid model's sliding-window layers (:func:`~eval.tables.sliding_layers`) are shaded grey.
    """
    if not curves:
        return None
    budgets = sorted({r.budget for r, _ in curves})
    fig, axes = _grid(1, len(budgets), 5.0, 3.6)
    for ax, budget in zip(axes[0], budgets):
        own = sorted(
            ((r, c) for r, c in curves if r.budget == budget), key=lambda p: method_rank(p[0].method)
        )
        sliding = sorted({layer for run, _ in own for layer in sliding_layers(run)})
        for k, (first, last) in enumerate(_blocks(sliding)):
            label = f"{SLIDING_LABEL} (not compressed)" if k == 0 else None
            ax.axvspan(first - 0.5, last + 0.5, color=SLIDING_COLOR, alpha=0.6, linewidth=0, label=label)
        for run, curve in own:
            layers = np.flatnonzero(~np.isnan(curve))
            ax.plot(layers, curve[layers], marker=".", color=method_color(run.method), label=run.method)
        if reference is not None:
            ax.axhline(reference, color="black", linewidth=0.8, linestyle=":")
        ax.set_title(f"budget {budget}", fontsize=10)
        ax.set_xlabel("layer")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _layer_share(run: Run, kept: np.ndarray) -> np.ndarray:
    """(layers,) a layer's kept entries over its uniform share (budget x KV heads); NaN on sliding layers."""
    share = kept.sum(axis=1) / (run.budget * kept.shape[1])
    share[sliding_layers(run)] = np.nan  # they hold their window, not a share of the budget
    return share


def layer_budget_lines(runs: Sequence[Run], path: Path) -> Path | None:
    """Per-layer total kept entries over (budget x KV heads), one line per method, a panel per budget."""
    kept = [(r, kept_mean(r)) for r in runs if r.budget is not None and r.method != FULL_METHOD]
    curves = [(r, _layer_share(r, k)) for r, k in kept if k is not None]
    title = f"Budget per layer (mean over samples, {runs[0].bench if runs else ''}); 1 = uniform"
    return layer_curves(curves, path, "layer total / uniform share", title, reference=1.0)


ATTN_ERR_FIELD = "attn_err_per_layer"


def _per_layer(record: dict[str, Any]) -> list[float] | None:
    for source in (record.get("scores") or {}, record.get("meta") or {}, record):
        value = source.get(ATTN_ERR_FIELD)
        if isinstance(value, list) and value:
            return [float(v) for v in value]
    return None


def layer_errors(run: Run) -> np.ndarray | None:
    """Mean over samples of ``attn_err_per_layer``, shape (layers,); None when absent or ragged."""
    rows = [v for v in (_per_layer(r) for r in run.records) if v is not None]
    if not rows or len({len(v) for v in rows}) != 1:
        return None
    return np.mean(np.asarray(rows, dtype=np.float64), axis=0)


def attn_err_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """Fidelity: mean per-layer attention-output error over samples, a line per method, a panel per budget.

    Reads a list-valued ``attn_err_per_layer`` from each record's scores or meta; returns None (no
    figure) when no run has it.
    """
    errors = [(run, layer_errors(run)) for run in runs if run.budget is not None]
    curves = [(run, curve) for run, curve in errors if curve is not None]
    title = (
        f"Layer-wise attention-output error vs full cache ({runs[0].bench if runs else ''}, lower is better)"
    )
    return layer_curves(curves, path, "attention-output error (relative L2)", title)


def perf_bars(perf_csv: Path, path: Path) -> Path | None:
    """Speed and memory at the longest measured prompt: decode speedup and KV memory vs full, per budget."""
    if not Path(perf_csv).exists():
        return None
    perf = pd.read_csv(perf_csv)
    perf = perf[(perf["length"] == perf["length"].max()) & perf["compressed"].astype(bool)]
    if perf.empty:
        return None
    perf = perf.assign(budget=perf["budget"].astype(int))
    budgets = sorted(perf["budget"].unique())
    methods = sorted(perf["method"].unique(), key=method_rank)
    fig, axes = _grid(1, 2, 5.5, 3.8)
    width = 0.8 / len(methods)
    x = np.arange(len(budgets))
    for i, method in enumerate(methods):
        part = perf[perf["method"] == method].groupby("budget").first().reindex(budgets)
        for ax, key in zip(axes[0], ("decode_speedup", "memory_ratio")):
            ax.bar(x + i * width, part[key], width, color=method_color(method), label=method)
    for ax, label in zip(axes[0], ("decode speedup vs full cache", "KV memory / full cache")):
        ax.set_xticks(x + 0.4 - width / 2, [str(b) for b in budgets])
        ax.set_xlabel("budget")
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].axhline(1.0, color="black", linewidth=0.8)
    axes[0][1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(f"Speed and memory at {int(perf['length'].iloc[0])} prompt tokens (results/perf)")
    fig.tight_layout()
    return save_figure(fig, path)


def write_figures(result: ResultTables, out: Path, perf_csv: Path | None = None) -> list[Path]:
    """Every figure of ``result`` into ``out``; several models: ``out/<model>/``.

    Per benchmark ``<bench>_vs_budget.png`` (and for NIAH ``niah_grid.png``; where kept arrays
    exist ``<bench>_budget_heads.png`` and ``<bench>_budget_layers.png``; for per-layer attention
    errors ``<bench>_attn_err.png``), ``summary_ranks.png``, and ``perf.png`` from ``perf_csv``.
    """
    written: list[Path] = []
    for model, folder, own in per_model(result.tables, out):
        for table in own:
            group = result.groups[(model, table.bench)]
            ratios = RATIO_SUFFIX in table.bench
            written.append(score_vs_budget(table, folder / f"{table.bench}_vs_budget.png"))
            optional = [
                niah_grid(group, folder / f"{table.bench}_grid.png")
                if table.bench in ("niah", "niah" + AGNOSTIC_SUFFIX)
                else None,
                # kept entries over the budget: a ratio run's budget differs by sample (not drawn)
                None if ratios else budget_heatmaps(group, folder / f"{table.bench}_budget_heads.png"),
                None if ratios else layer_budget_lines(group, folder / f"{table.bench}_budget_layers.png"),
                attn_err_curves(group, folder / f"{table.bench}_attn_err.png"),
            ]
            written += [p for p in optional if p is not None]
        for stem, group in summary_groups(own).items():  # one per question setting and unit
            written.append(summary_ranks(summary_table(group), folder / f"{stem}_ranks.png"))
    if perf_csv is not None:
        perf = perf_bars(perf_csv, Path(out) / "perf.png")
        if perf is not None:
            written.append(perf)
    return written
