"""The NIAH depth x length heatmap and the PNG writer every figure goes through (matplotlib, headless).

Below the benchmarks: NIAH draws its run-folder heatmap with :func:`niah_heatmap`, and the results
layer (:mod:`eval.plots`) shares :data:`NIAH_CMAP` and :func:`save_figure`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

# gkamradt / PyramidKV NIAH colours: red -> yellow -> green.
NIAH_CMAP = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
DPI = 110


def save_figure(fig: Any, path: Path, dpi: int = DPI) -> Path:
    """PNG with a fixed dpi and no version or time metadata, so a rerun writes identical bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path


def niah_heatmap(
    records: pd.DataFrame,
    path: Path,
    *,
    value: str = "score",
    title: str = "",
    train_length: int | None = None,
) -> Path:
    """Depth x context-length heatmap of the mean ``value`` per cell, on a fixed 0-1 colour scale.

    Parameters
    ----------
    records : DataFrame
        Columns ``depth``, ``length`` and ``value``; several rows per cell are averaged.
    path : Path
        Output PNG.
    train_length : int, optional
        Draws a dashed vertical line at the model's training length when it falls inside the grid.
    """
    pivot = records.pivot_table(index="depth", columns="length", values=value, aggfunc="mean").sort_index()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * pivot.shape[1] + 3), 0.45 * pivot.shape[0] + 2.5))
    im = ax.imshow(pivot.to_numpy(), cmap=NIAH_CMAP, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(np.arange(pivot.shape[1]), [str(c) for c in pivot.columns], rotation=45)
    ax.set_yticks(np.arange(pivot.shape[0]), [str(int(d)) for d in pivot.index])
    ax.set_xticks(np.arange(-0.5, pivot.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, pivot.shape[0]), minor=True)
    ax.grid(which="minor", color="grey", linestyle="--", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    if train_length is not None:
        cols = list(pivot.columns)
        if cols and cols[0] <= train_length <= cols[-1]:
            x = float(np.interp(train_length, cols, np.arange(len(cols))))
            ax.axvline(x, color="white", linestyle="--", linewidth=2)
    ax.set_xlabel("Token Limit")
    ax.set_ylabel("Depth Percent")
    overall = float(np.nanmean(pivot.to_numpy()))
    ax.set_title(f"{title}  (overall {overall:.3f})".strip())
    fig.colorbar(im, ax=ax, label=value)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
