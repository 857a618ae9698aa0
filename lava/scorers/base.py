"""The scorer interface: what every scorer takes (window queries, keys, values) and returns (LayerScores)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
