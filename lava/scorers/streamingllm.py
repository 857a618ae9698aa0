"""StreamingLLM: keep a few attention-sink tokens plus the most recent ones.

Parts: :class:`SinkRecencyScorer` + uniform layers + uniform heads. With the window always kept,
"4 sinks + the most recent B0 - 4" is the top of a score that ranks sinks first, then recency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.scorers.base import LayerScores, Scorer


@dataclass
class SinkRecencyScorer(Scorer):
    """Score = position (recency), with the first ``sinks`` positions ranked above everything."""

    sinks: int = 4

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        hkv, n, _ = keys.shape
        prefix = n - window
        score = torch.arange(prefix, dtype=torch.float32, device=keys.device)
        score[: self.sinks] = float(n + 1)
        return LayerScores(score.expand(hkv, prefix).clone())
