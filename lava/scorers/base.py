"""The scorer interface: what every scorer takes (the last prompt queries, keys, values) and returns (LayerScores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lava.scorers.rotary import Rotary


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

    ``query_window`` has shape (Hq, m, d): the post-RoPE queries of the last ``m`` prompt tokens,
    ``m`` being what :meth:`queries_needed` asks for (the window by default, the whole prompt for
    scorers that read every query); ``keys`` and ``values`` (Hkv, n, d), post-RoPE.
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

    def queries_needed(self, window: int) -> int | None:
        """How many of the last prompt queries the scorer reads: ``window`` by default, None for all.

        :func:`lava.policy.score_layer` passes that many (all ``n`` when it is None or exceeds ``n``),
        and a sweep's capture keeps the most any of its methods needs (:func:`lava.prefill.capture_queries`).
        """
        return window

    def bind(self, model_name: str | None, budget: int) -> None:
        """Resolve model- or budget-dependent defaults (CAKE's temperatures); a no-op by default."""

    def bind_model(self, rotary: Rotary | None) -> None:
        """Take what the scorer needs from the model it will score; a no-op by default.

        ``rotary`` is the model's rotary embedding (:func:`lava.scorers.rotary.rotary_of`; None for
        a model without one), for scorers that turn post-RoPE queries back into pre-RoPE ones. Called
        before scoring by :meth:`lava.method.CompressionMethod.build_cache` (single runs) and
        :func:`lava.prefill.score_methods` (sweeps), through :func:`bind_model`.
        """


def bind_model(scorer: Any, rotary: Rotary | None) -> None:
    """``scorer.bind_model(rotary)``; a scorer that does not subclass :class:`Scorer` (a test's
    duck-typed wrapper) and has no such hook needs nothing from the model."""
    hook = getattr(scorer, "bind_model", None)
    if hook is not None:
        hook(rotary)
