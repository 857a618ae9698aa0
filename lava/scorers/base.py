"""The scorer interface: what every scorer takes (the last prompt queries, keys, values) and returns (LayerScores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

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

    A scorer with :attr:`needs_model_pass` (KVzip) scores from forward passes of its own over the
    prefilled prompt instead: once every layer is prefilled, the prefill path (a single run's
    :class:`lava.cache.CompressedCache`, a sweep's :func:`lava.prefill.score_methods`) runs
    :meth:`model_pass`, then calls the scorer per global layer with ``query_window=None`` and that
    layer's share of the pass as the keyword ``evidence``.
    """

    #: Whether the scores come from :meth:`model_pass` rather than from the prompt's queries.
    needs_model_pass: ClassVar[bool] = False

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

    def model_pass(
        self, model: Any, input_ids: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor, int | None]]
    ) -> list[torch.Tensor]:
        """Forward passes of ``model`` on top of the prefilled prompt; only for :attr:`needs_model_pass`.

        Parameters
        ----------
        model : transformers.PreTrainedModel
            The model that prefilled the prompt (its attention switched to ``"lava"``).
        input_ids : Tensor, shape (1, n)
            The prompt.
        layers : list of (keys, values, window)
            Per decoder layer, what the prefill left: a global layer's whole prompt, keys and
            values (Hkv, n, d) post-RoPE, with ``window`` None; a sliding layer's kept last entries
            (Hkv, m, d) with its sliding window. Read, never modified.

        Returns
        -------
        list of Tensor, shape (Hkv, n)
            Per global layer, in order: the evidence its :meth:`__call__` turns into scores.
        """
        raise NotImplementedError(f"{type(self).__name__} scores from the prompt's queries, not a model pass")

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


def needs_model_pass(scorer: Any) -> bool:
    """Whether ``scorer`` scores from a model pass of its own (:attr:`Scorer.needs_model_pass`); a
    duck-typed scorer without the attribute reads the prompt's queries."""
    return bool(getattr(scorer, "needs_model_pass", False))
