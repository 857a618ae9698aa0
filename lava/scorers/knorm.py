"""Key-norm scoring (KnormPress in NVIDIA/kvpress): keys with a small L2 norm are kept first.

Parts: :class:`KeyNormScorer` + uniform layers + uniform heads (``configs/method/knorm.yaml``).
Query-agnostic: neither the queries nor the values enter the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.scorers.base import LayerScores, Scorer


@dataclass
class KeyNormScorer(Scorer):
    """Score of prefix entry ``j`` of KV head ``kv``: ``-||k_{kv, j}||_2`` (post-RoPE key, fp32).

    The sign follows kvpress: the published observation is that a low key norm goes with high
    attention, so the smallest norms rank highest. Each KV head is scored on its own keys; the
    query heads of a GQA group play no part.
    """

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        prefix = keys.shape[1] - window
        # fp32 so that bf16 rounding of the norms does not create ties the float32 ranks would not have
        return LayerScores(-torch.linalg.vector_norm(keys[:, :prefix].float(), dim=-1))
