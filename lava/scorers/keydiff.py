"""KeyDiff scoring (KeyDiffPress in NVIDIA/kvpress): keys least like the layer's average key are kept.

Parts: :class:`KeyDiffScorer` + uniform layers + uniform heads (``configs/method/keydiff.yaml``).
Query-agnostic: neither the queries nor the values enter the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from lava.scorers.base import LayerScores, Scorer


@dataclass
class KeyDiffScorer(Scorer):
    """Score of prefix entry ``j`` of KV head ``kv``: ``-cos(k_{kv, j}, a_kv)`` (fp32).

    The anchor ``a_kv = mean_{t < n} k_{kv, t} / ||k_{kv, t}||`` is the mean of the head's unit keys
    over the **whole prompt**, window included (as kvpress, which averages over every key it holds);
    it is not renormalised, which leaves the cosine unchanged. Keys pointing away from the anchor
    rank highest. GQA: one score per KV head from its own keys.
    """

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        prefix = keys.shape[1] - window
        keys = keys.float()
        anchor = F.normalize(keys, p=2, dim=-1).mean(dim=1, keepdim=True)  # (Hkv, 1, d)
        return LayerScores(-F.cosine_similarity(keys[:, :prefix], anchor, dim=-1))
