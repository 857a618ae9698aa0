"""Observed attention at the end of the prefill (kvpress's ObservedAttentionPress, after H2O).

Parts: :class:`H2OScorer` + uniform layers + uniform heads (``configs/method/h2o.yaml``). Reads every
prompt query (:meth:`H2OScorer.queries_needed` is None), so a sweep's capture keeps them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.scorers.base import LayerScores, Scorer

# Logits per chunk of queries (fp32): bounds the transient memory to ~2 x 64 MiB (logits and
# probabilities) instead of the Hq x n x n attention matrix. The chunk length depends only on
# (Hq, n), so a single run and a sweep sum in the same order.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class H2OScorer(Scorer):
    """Score of prefix entry ``j`` of KV head ``kv``: the attention it receives from the prompt.

    ``score[kv, j] = mean_{h in kv} (1 / (n - j)) sum_{i >= j} A[h, i, j]`` with
    ``A[h, i] = softmax_{t <= i}(q_i . k_t * scaling)``, the causal attention of query ``i`` (every
    prompt token, window included) over the keys up to its own. ``n - j`` is the number of queries
    that see key ``j``: the sum becomes a mean, so that late keys, seen by few queries, are not
    ranked down for that alone (kvpress's normalisation).

    Parameters
    ----------
    normalize : bool
        True divides the sum by ``n - j`` (kvpress); False keeps the plain accumulated attention of
        the H2O paper, which favours early positions.
    """

    normalize: bool = True

    def queries_needed(self, window: int) -> int | None:
        return None  # every prompt query

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        hq, n, d = query_window.shape
        hkv = keys.shape[0]
        if n != keys.shape[1]:
            raise ValueError(f"H2O reads every prompt query: got {n} queries for {keys.shape[1]} keys")
        group = hq // hkv
        # (Hkv, g, n, d): contiguous fp32, so that a view (single run) and a copy (sweep) sum alike
        q = query_window.float().contiguous().view(hkv, group, n, d)
        k = keys.float()
        received = torch.zeros(hkv, group, n, dtype=torch.float32, device=keys.device)
        chunk = max(1, CHUNK_ELEMENTS // (hq * n))
        positions = torch.arange(n, device=keys.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            # queries start..stop-1 see keys 0..stop-1 at most
            logits = torch.matmul(q[:, :, start:stop], k[:, None, :stop].transpose(-1, -2)) * scaling
            future = positions[None, :stop] > positions[start:stop, None]  # (c, stop)
            probs = torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1)
            received[:, :, :stop] += probs.sum(dim=2)
        if self.normalize:
            received = received / (n - positions).float()  # queries at positions >= j
        prefix = n - window
        return LayerScores(received[:, :, :prefix].mean(dim=1))
