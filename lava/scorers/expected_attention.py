"""Expected attention (kvpress's ExpectedAttentionPress): the attention future queries are expected to pay.

Parts: :class:`ExpectedAttentionScorer` + uniform layers + uniform heads
(``configs/method/expected_attention.yaml``), or + Ada-KV's flat head allocation
(``configs/method/adakv_expected_attention.yaml``). Reads every prompt query by default and needs
the model's rotary embedding (:meth:`ExpectedAttentionScorer.bind_model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lava.errors import UserError
from lava.scorers.base import LayerScores, Scorer
from lava.scorers.rotary import LENGTH_DEPENDENT, Rotary


@dataclass
class ExpectedAttentionScorer(Scorer):
    """Score of prefix entry ``j`` of KV head ``kv``: its expected attention from the next queries.

    1. The pre-RoPE queries ``x_i`` of the statistics' positions (every prompt position from
       ``n_sink`` on, or the last ``recent`` of them) are recovered from the post-RoPE ones by the
       inverse rotation. Per query head: mean ``mu`` and covariance ``S = (1/m) sum (x - mu)(x - mu)^T``
       (divided by the count ``m``).
    2. The rotation is averaged over the ``n_future_positions`` positions after the prompt,
       ``R = mean_{t = n}^{n + T - 1} R_t``, and applied: ``mu' = R mu``, ``S' = R S R^T``.
    3. A query ``q ~ N(mu', S')`` gives ``E[exp(s q . k)] = exp(s mu' . k + s^2 k^T S' k / 2)``
       (``s`` the attention scaling, ``1/sqrt(d)``); its softmax over the keys from ``n_sink`` on
       (window included, dropped after it) is averaged over the query heads of the GQA group.
    4. ``use_vnorm``: ``(score + epsilon) * ||v_j||_2``.
    5. The first ``n_sink`` positions get the layer's largest score (over all KV heads) plus one, so
       every head keeps them first.

    Parameters
    ----------
    n_future_positions : int
        Positions after the prompt the rotation is averaged over (512).
    n_sink : int
        First positions kept unconditionally and left out of the query statistics and the softmax (4).
    use_covariance : bool
        Include the covariance term (True); False keeps the mean query alone.
    use_vnorm : bool
        Multiply by the value norm (True).
    epsilon : float
        Added to the attention before the value norm multiplies it (0).
    recent : int or None
        None: statistics over every prompt query after the sinks (kvpress); an integer: over the
        last ``recent`` prompt queries only (those after the sinks).
    """

    n_future_positions: int = 512
    n_sink: int = 4
    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0
    recent: int | None = None

    def __post_init__(self) -> None:
        if self.n_future_positions < 1 or self.n_sink < 0 or (self.recent is not None and self.recent < 1):
            raise UserError(
                f"expected attention needs n_future_positions >= 1, n_sink >= 0 and recent >= 1 or null; "
                f"got {self.n_future_positions}, {self.n_sink}, {self.recent}"
            )
        self._rotary: Rotary | None = None  # not a field: bound per model, never part of the identity

    def queries_needed(self, window: int) -> int | None:
        return self.recent

    def bind_model(self, rotary: Rotary | None) -> None:
        """Keep the model's rotary embedding: the statistics are taken on pre-RoPE queries."""
        if rotary is None:
            raise UserError("expected attention needs a model with a rotary position embedding")
        if rotary.rope_type in LENGTH_DEPENDENT:
            raise UserError(
                f"expected attention does not support rope_type={rotary.rope_type!r}, whose frequencies "
                "change with the sequence length"
            )
        self._rotary = rotary

    def __call__(self, query_window, keys, values, window, scaling) -> LayerScores:
        rotary = self._rotary
        if rotary is None:
            raise RuntimeError(
                "ExpectedAttentionScorer is not bound to a model: build the cache with "
                "method.build_cache(model) or score through lava.prefill.score_methods"
            )
        hq, m, d = query_window.shape
        hkv, n, _ = keys.shape
        rotary.check_head_dim(d)
        group = hq // hkv
        prefix = n - window
        device = keys.device
        sinks = min(self.n_sink, n)
        # query i of query_window sits at position n - m + i; the statistics skip the sinks
        first = max(sinks, n - m)
        if first >= n:  # nothing after the sinks: every prefix entry is a sink
            return LayerScores(torch.ones(hkv, prefix, dtype=torch.float32, device=device))
        positions = torch.arange(first, n, device=device)
        post = query_window[:, first - (n - m) :].float().contiguous()  # (Hq, m', d)
        pre = rotary.unrotate(post, positions)
        mean = pre.mean(dim=1)  # (Hq, d)
        rot = rotary.mean_rotation(torch.arange(n, n + self.n_future_positions, device=device))
        k = keys[:, sinks:].float()  # (Hkv, n - sinks, d)
        logits = torch.einsum("kgd,knd->kgn", (mean @ rot.T).view(hkv, group, d), k) * scaling
        if self.use_covariance:
            centred = pre - mean[:, None]
            cov = centred.transpose(1, 2) @ centred / centred.shape[1]  # (Hq, d, d), divided by the count
            cov = rot @ cov @ rot.T
            spread = torch.einsum("knd,kgde,kne->kgn", k, cov.view(hkv, group, d, d), k)
            logits = logits + spread * (scaling**2 / 2)
        scores = torch.softmax(logits, dim=-1).mean(dim=1)  # (Hkv, n - sinks)
        if self.use_vnorm:
            scores = (scores + self.epsilon) * torch.linalg.vector_norm(values[:, sinks:].float(), dim=-1)
        top = scores.max() + 1  # above every score of every head: the sinks are kept first everywhere
        scores = torch.cat([top.expand(hkv, sinks), scores], dim=1)
        return LayerScores(scores[:, :prefix])
