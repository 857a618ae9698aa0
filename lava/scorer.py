"""The scorer interface and the SnapKV scorer that most methods share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.scoring import group_reduce, pool_1d, window_attention


@dataclass
class LayerScores:
    """What a scorer returns for one layer.

    Attributes
    ----------
    scores : Tensor, shape (Hkv, P)
        Importance of each evictable prefix entry; higher is kept first.
    stat : float or None
        The layer statistic a dynamic layer allocator divides the budget by (entropy, preference).
    """

    scores: torch.Tensor
    stat: float | None = None


class Scorer:
    """Base class: ``__call__(query_window, keys, values, window, scaling) -> LayerScores``.

    ``query_window`` has shape (Hq, w, d); ``keys`` and ``values`` (Hkv, n, d), post-RoPE.
    """

    def __call__(
        self,
        query_window: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        window: int,
        scaling: float,
    ) -> LayerScores:
        raise NotImplementedError

    def bind(self, model_name: str | None, budget: int) -> None:
        """Resolve model- or budget-dependent defaults (CAKE's temperatures); a no-op by default."""


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
        # Upstream reduces over the GQA group first, then pools (LAVa pools first: see lava.lava).
        grouped = group_reduce(mean, keys.shape[0], self.gqa)
        return LayerScores(pool_1d(grouped, self.kernel, self.pooling))
