"""CAKE, as the official antgroup/cakekv code defines it (docs/methods.md, CAKE).

Parts: :class:`CakeScorer` (token score ``mean + gamma * var`` of the window attention, avg-pooled,
GQA mean; layer preference ``H^(1/tau1) * V^(1/tau2)``) + :class:`~lava.allocation.PreferenceLayerBudget`
(official ``adjust_budgets``: clamped to each layer's prefix, surplus and rounding deficit spread
evenly, allocated once after the last layer) + uniform heads. ``cascading=True`` on the allocator
(``configs/method/cake_cascading.yaml``) is official CAKE's ``use_cascading``: the same rule after
every layer over the layers seen so far, earlier layers evicted down as layers arrive.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.window import group_reduce, pool_1d, window_attention

# (tau1, tau2) per model and budget from CAKE's experiments/LongBench/config/model2tau.json; (1, 1) otherwise.
MODEL_TAU: dict[str, dict[int, tuple[float, float]]] = {
    "llama-3.1-8b-instruct": {1024: (1.6, 0.4), 128: (1.6, 0.6)},
    "mistral-7b-instruct-v0.3": {1024: (0.8, 0.5), 128: (1.0, 0.8)},
    "qwen2.5-7b-instruct": {1024: (1.5, 0.6), 128: (0.4, 0.6)},
}


def tau_for(model: str, budget: int) -> tuple[float, float]:
    """The (tau1, tau2) of the nearest tabulated budget for ``model``, or (1.0, 1.0)."""
    table = MODEL_TAU.get(model)
    if not table:
        return (1.0, 1.0)
    nearest = min(table, key=lambda b: abs(b - budget))
    return table[nearest]


@dataclass
class CakeScorer(Scorer):
    """CAKE token scores and layer preference.

    Parameters
    ----------
    gamma : float
        Weight of the attention variance in the token score (200).
    kernel : int
        Average-pooling window (5).
    tau1, tau2 : float or None
        Temperatures of the entropy and variance terms; ``None`` takes :func:`tau_for` (model, budget),
        resolved by the method from its ``model`` and ``budget``.
    """

    gamma: float = 200.0
    kernel: int = 5
    pooling: str = "avg"
    tau1: float | None = None
    tau2: float | None = None

    def bind(self, model_name: str | None, budget: int) -> None:
        """Fill unset temperatures from the per-model table."""
        default1, default2 = tau_for(model_name or "", budget)
        self.tau1 = default1 if self.tau1 is None else self.tau1
        self.tau2 = default2 if self.tau2 is None else self.tau2

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        hkv, n, _ = keys.shape
        prefix = n - window
        block = window_attention(query_window, keys, scaling)[:, :, :prefix]  # (Hq, w, P)
        # Over the window queries; unbiased as upstream (torch default), population variance for a 1-query window.
        variance = block.var(dim=1, correction=1 if block.shape[1] > 1 else 0)
        token = pool_1d(block.mean(dim=1) + self.gamma * variance, self.kernel, self.pooling)
        dispersion = -(block * torch.log(block + 1e-10)).sum()
        # The allocators work on the host: both layer statistics come over in one transfer.
        dispersion, spread = torch.stack([dispersion, variance.sum()]).tolist()
        tau1, tau2 = self.tau1 or 1.0, self.tau2 or 1.0
        preference = dispersion ** (1.0 / tau1) * spread ** (1.0 / tau2)
        return LayerScores(group_reduce(token, hkv, "mean"), preference)
