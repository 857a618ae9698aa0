"""TOVA scoring at the end of the prefill (TOVAPress in NVIDIA/kvpress): the last prompt token's attention.

Parts: :class:`TovaScorer` + uniform layers + uniform heads (``configs/method/tova.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lava.scorers.base import LayerScores, Scorer
from lava.scorers.window import window_attention


@dataclass
class TovaScorer(Scorer):
    """Score of prefix entry ``j``: ``mean_{h < Hq} A_last[h, j]``, the same for every KV head.

    ``A_last[h]`` is the softmax of the last prompt token's query (head ``h``) over all ``n`` keys,
    its own included; the window columns are dropped after the softmax. The mean runs over **all**
    query heads of the layer, not over a GQA group (TOVA makes one decision per layer; kvpress
    averages over the heads and repeats the result for every KV head), so every head keeps the same
    positions. Only the last of the window queries is read, whatever ``window`` is.
    """

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        hkv, n, _ = keys.shape
        prefix = n - window
        # the last query sits at position n - 1: the causal mask hides nothing from it
        probs = window_attention(query_window[:, -1:], keys, scaling)  # (Hq, 1, n)
        shared = probs[:, 0, :prefix].mean(dim=0)  # (P,)
        return LayerScores(shared.expand(hkv, prefix).clone())
