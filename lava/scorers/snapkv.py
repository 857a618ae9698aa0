"""SnapKV's scorer, shared by SnapKV, PyramidKV and Ada-KV: pooled mean window attention per prefix key."""

from __future__ import annotations

from dataclasses import dataclass

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.window import group_reduce, pool_1d, window_attention


@dataclass
class SnapKVScorer(Scorer):
    """Mean window attention per prefix key, pooled, averaged over the GQA group (SnapKV, Ada-KV, PyramidKV).

    Parameters
    ----------
    kernel : int
        Pooling window (7 in the LAVa/Ada-KV configs).
    pooling : {"max", "avg"}
    gqa : {"mean", "max"}
    """

    kernel: int = 7
    pooling: str = "max"
    gqa: str = "mean"

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        prefix = keys.shape[1] - window
        probs = window_attention(query_window, keys, scaling)  # (Hq, w, n)
        mean = probs[:, :, :prefix].mean(dim=1)  # window columns dropped after the softmax
        # Upstream reduces over the GQA group first, then pools (LAVa pools first: see lava.scorers.lava).
        grouped = group_reduce(mean, keys.shape[0], self.gqa)
        return LayerScores(pool_1d(grouped, self.kernel, self.pooling))
