"""LAVa's own parts: the value-norm-weighted scorer (its layer statistic is the normalised entropy).

Its layer allocator is :class:`lava.allocation.EntropyLayerBudget` and its head allocator
:class:`lava.allocation.FlatHeadBudget` (docs/methods.md, ``lava``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.window import group_reduce, pool_1d, window_attention

ENTROPY_EPS = 1e-16  # upstream epsilon, in the denominator and inside the log


@dataclass
class LavaScorer(Scorer):
    """``S[kv, j] = max_{h in group(kv)} pool(mean_window A)[h, j] * max_j' ||V[kv, j']||_1``.

    The value factor is one scalar per KV head (the largest L1 norm of a prefix value vector): it
    leaves the order within a head unchanged and makes scores comparable across heads. The layer
    statistic is ``H(S / sum S) / log(Hkv * P)``.

    Parameters
    ----------
    kernel : int
        Pooling window (7).
    pooling : {"max", "avg"}
        Upstream LAVa scripts use max pooling.
    gqa : {"max", "mean"}
        Reduction over the query heads of a group (LAVa: max).
    """

    kernel: int = 7
    pooling: str = "max"
    gqa: str = "max"

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        hkv, n, _ = keys.shape
        prefix = n - window
        probs = window_attention(query_window, keys, scaling)
        pooled = pool_1d(probs[:, :, :prefix].mean(dim=1), self.kernel, self.pooling)  # (Hq, P)
        value_norm = values[:, :prefix].float().abs().sum(dim=-1).amax(dim=-1)  # (Hkv,)
        group = pooled.shape[0] // hkv
        pooled = pooled * value_norm.repeat_interleave(group)[:, None]
        scores = group_reduce(pooled, hkv, self.gqa)
        return LayerScores(scores, normalised_entropy(scores))


def normalised_entropy(scores: torch.Tensor) -> float:
    """Entropy of the flattened scores as a distribution, divided by ``log(numel)``."""
    flat = scores.reshape(-1).double()
    if flat.numel() <= 1:
        return 1.0
    p = flat / (flat.sum() + ENTROPY_EPS)
    entropy = -(p * torch.log(p + ENTROPY_EPS)).sum()
    return float(entropy / math.log(flat.numel()))
