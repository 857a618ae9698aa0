"""Fidelity of a compressed cache to the full one: pure functions on logits and attention tensors.

Two families of measures, both computed on the same teacher-forced continuation:

- end to end, on the next-token distributions: :func:`next_token_kl` (KL(full || compressed), nats
  per position), :func:`top1_agreement` and :func:`token_nll` (for the NLL difference);
- per layer, the error of the layer's attention output (LAVa's layer-wise objective):
  :func:`causal_attention_many` computes the continuation's attention over what each compressed cache
  kept (:func:`windowed_attention` on a sliding-window layer of a hybrid model), :func:`relative_l2`
  compares it with the full-cache output.

Everything is computed in float64 or float32 regardless of the model's dtype, so that the measures
do not depend on bf16 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Metrics where a lower value is better; benchmarks expose this set as ``lower_is_better``.
LOWER_IS_BETTER = frozenset({"kl", "nll_delta", "attn_err"})


def next_token_kl(full_logits: torch.Tensor, compressed_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_full || p_compressed) of the softmax distributions at each position, in nats.

    Parameters
    ----------
    full_logits, compressed_logits : Tensor, shape (m, V)

    Returns
    -------
    Tensor, shape (m,), float64
    """
    log_p = torch.log_softmax(full_logits.double(), dim=-1)
    log_q = torch.log_softmax(compressed_logits.double(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


# Past this log-ratio the fast path's float32 exp could overflow or lose a term; the exact path runs instead.
_FAST_LOG_RATIO_LIMIT = 60.0


@dataclass(frozen=True)
class FullDistribution:
    """The full cache's next-token distributions, summarised once to score many compressed caches.

    With the full logits ``z_p``, a compressed cache's ``z_q`` and ``delta = z_p - z_q``,

        lse_q - lse_p = log sum_v p_v exp(-delta_v) = log1p(sum_v p_v expm1(-delta_v))
        KL(p || q)    = sum_v p_v delta_v + (lse_q - lse_p)

    Both sums are of ``delta``, the difference of the two caches, so they stay accurate in float32
    elementwise work with float64 accumulation: no float64 exp of the vocabulary per cache,
    identical logits give exactly 0, and close ones keep their tiny KL. The error against the
    float64 definition is about 1e-7 of ``sum_v p_v |delta_v|``. Where ``Z_q / Z_p < 0.5`` (the
    compressed cache moves most of p's mass away) ``log1p`` would cancel, and the positive terms of
    ``sum_v p_v exp(-delta_v)`` are summed instead. A cache whose logits exceed the full ones by more
    than 60 anywhere goes through the float64 definition.

    Attributes
    ----------
    logits : Tensor, shape (m, V), float32
    probs : Tensor, shape (m, V), float32
        Softmax of ``logits`` computed in float64, rounded.
    mass : Tensor, shape (m,), float64
        ``probs.sum(-1)`` (1 up to rounding; the sums are divided by it).
    lse : Tensor, shape (m,), float64
        ``logsumexp(logits)``.
    top1 : Tensor, shape (m,), int64
        ``argmax(logits)``.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    mass: torch.Tensor
    lse: torch.Tensor
    top1: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor) -> FullDistribution:
        z = logits.float()
        lse = torch.logsumexp(z.double(), dim=-1)
        probs = torch.exp(z.double() - lse[:, None]).float()
        return cls(z, probs, probs.sum(dim=-1, dtype=torch.float64), lse, z.argmax(dim=-1))

    def kl_and_nll(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(full || compressed) per position and the compressed NLL of ``targets``; (m,) float64 each.

        Parameters
        ----------
        logits : Tensor, shape (m, V)
            The compressed cache's logits at the same positions.
        targets : Tensor, shape (m,)
        """
        z = logits.float()
        delta = self.logits - z
        if float(delta.min()) < -_FAST_LOG_RATIO_LIMIT:
            return self._exact_kl_and_nll(z, targets)
        linear = (self.probs * delta).sum(dim=-1).double() / self.mass
        delta.neg_().expm1_()
        excess = (self.probs * delta).sum(dim=-1).double() / self.mass  # Z_q / Z_p - 1
        log_ratio = torch.log1p(excess)
        # Where the compressed cache drops most of p's mass, 1 + excess cancels: sum the positive terms.
        lost = (excess < -0.5).nonzero().squeeze(1)
        if lost.numel():
            terms = self.probs[lost] * torch.exp(z[lost] - self.logits[lost])
            log_ratio[lost] = torch.log(terms.sum(dim=-1, dtype=torch.float64) / self.mass[lost])
        # KL >= 0; rounding (~1e-7 of sum p |delta|) could take a near-identical cache just below it.
        return (linear + log_ratio).clamp_min(0.0), _nll(z, self.lse + log_ratio, targets)

    def _exact_kl_and_nll(self, z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return next_token_kl(self.logits, z), token_nll(z, targets)

    def nll(self, targets: torch.Tensor) -> torch.Tensor:
        """(m,) NLL of ``targets`` under the full distributions (the same arithmetic as :meth:`kl_and_nll`)."""
        return _nll(self.logits, self.lse, targets)

    def top1_agreement(self, logits: torch.Tensor) -> torch.Tensor:
        """:func:`top1_agreement` against the stored argmax; (m,) float64."""
        return (self.top1 == logits.argmax(dim=-1)).double()


def _nll(z: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return lse - z.gather(1, targets.long().view(-1, 1)).squeeze(1).double()


def top1_agreement(full_logits: torch.Tensor, compressed_logits: torch.Tensor) -> torch.Tensor:
    """1.0 where the two argmax tokens agree, else 0.0. Shapes (m, V) -> (m,) float64."""
    return (full_logits.argmax(dim=-1) == compressed_logits.argmax(dim=-1)).double()


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` (m,) under ``logits`` (m, V), in nats; (m,) float64."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return -log_p.gather(1, targets.long().view(-1, 1)).squeeze(1)


def relative_l2(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact|| / ||exact||`` over all elements (Frobenius norm); 0 when both are zero."""
    approx, exact = approx.double(), exact.double()
    denom = torch.linalg.vector_norm(exact)
    diff = torch.linalg.vector_norm(approx - exact)
    if float(denom) == 0.0:
        return 0.0 if float(diff) == 0.0 else float("inf")
    return float(diff / denom)


def causal_attention_many(
    query: torch.Tensor,
    prompts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    new_keys: torch.Tensor,
    new_values: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Attention of ``m`` new queries over each of several per-head prompt caches plus their own keys.

    Query head ``h`` belongs to KV head ``h // (Hq / Hkv)`` (grouped-query attention). It sees every
    prompt row of its KV head in the cache and the new tokens up to and including its own position.
    The caches share the queries and the new tokens (one continuation, several compressions of its
    prompt): every (cache, KV head) pair is one block of :func:`lava.varlen.varlen_attention`, blocks
    of similar length computed together.

    Parameters
    ----------
    query : Tensor, shape (Hq, m, d)
        Post-RoPE queries of the new tokens.
    prompts : sequence of (keys (N_c, d), values (N_c, d), row_head (N_c,) int64)
        Per cache: its kept prompt entries of all KV heads as rows, in any order, and each row's KV head.
    new_keys, new_values : Tensor, shape (Hkv, m, d)
        The new tokens' own (post-RoPE) keys and values.
    scaling : float
        Softmax scale (usually ``d ** -0.5``).

    Returns
    -------
    Tensor, shape (C, Hq, m, d), float32 (float64 for float64 inputs)
        One attention output per cache, in the order of ``prompts``.
    """
    from lava.varlen import varlen_attention

    hq, m, d = query.shape
    hkv = new_keys.shape[0]
    caches = len(prompts)
    dtype = torch.promote_types(query.dtype, torch.float32)
    orders = [torch.argsort(h, stable=True) for _, _, h in prompts]  # head after head, as blocks need
    out = varlen_attention(
        query.to(dtype)
        .reshape(1, hkv, (hq // hkv) * m, d)
        .expand(caches, -1, -1, -1)
        .reshape(caches * hkv, -1, d),
        torch.cat([k[o] for (k, _, _), o in zip(prompts, orders)]).to(dtype),
        torch.cat([v[o] for (_, v, _), o in zip(prompts, orders)]).to(dtype),
        torch.cat([torch.bincount(h.cpu(), minlength=hkv) for _, _, h in prompts]),
        new_keys.to(dtype).expand(caches, -1, -1, -1).reshape(caches * hkv, m, d),
        new_values.to(dtype).expand(caches, -1, -1, -1).reshape(caches * hkv, m, d),
        m,
        scaling,
    )  # (C * Hkv, g * m, d): row j * m + i is query head (kv, j), token i
    return out.reshape(caches, hq, m, d)


def windowed_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    row_head: torch.Tensor,
    row_pos: torch.Tensor,
    new_keys: torch.Tensor,
    new_values: torch.Tensor,
    scaling: float,
    window: int,
    start: int,
) -> torch.Tensor:
    """Sliding-window attention of ``m`` new queries over kept prompt rows plus their own keys.

    New token ``i`` sits at position ``start + i`` and sees a key at position ``k`` only when
    ``0 <= start + i - k < window`` (the window counts the token itself, as transformers' sliding
    mask does); query head ``h`` reads the rows of KV head ``h // (Hq / Hkv)``. A sliding layer keeps
    at most ``window - 1`` prompt rows per head, so the dense logits stay small.

    Parameters
    ----------
    query : Tensor, shape (Hq, m, d)
        Post-RoPE queries of the new tokens.
    keys, values : Tensor, shape (N, d)
        Kept prompt rows of all KV heads, in any order.
    row_head, row_pos : Tensor, shape (N,), int64
        Each row's KV head and prompt position.
    new_keys, new_values : Tensor, shape (Hkv, m, d)
        The new tokens' own keys and values.
    scaling : float
    window : int
        The layer's sliding window.
    start : int
        Position of the first new token (the prompt length).

    Returns
    -------
    Tensor, shape (Hq, m, d), float32 (float64 for float64 inputs)
    """
    hq, m, d = query.shape
    hkv = new_keys.shape[0]
    dtype = torch.promote_types(query.dtype, torch.float32)
    device = query.device
    q = query.to(dtype).reshape(hkv, (hq // hkv) * m, d)  # row j * m + i: query head (kv, j), token i
    q_pos = start + torch.arange(m, device=device).repeat(hq // hkv)  # (g * m,)
    # Every KV head sees all prompt rows, masked to its own: (Hkv, N + m) keys per query row.
    k = torch.cat([keys.to(dtype)[None].expand(hkv, -1, -1), new_keys.to(dtype)], dim=1)
    v = torch.cat([values.to(dtype)[None].expand(hkv, -1, -1), new_values.to(dtype)], dim=1)
    k_pos = torch.cat([row_pos.to(device), start + torch.arange(m, device=device)])  # (N + m,)
    own = torch.cat(
        [
            row_head.to(device)[None, :] == torch.arange(hkv, device=device)[:, None],
            torch.ones(hkv, m, dtype=torch.bool, device=device),
        ],
        dim=1,
    )  # (Hkv, N + m)
    gap = q_pos[:, None] - k_pos[None, :]  # (g * m, N + m)
    visible = own[:, None, :] & ((gap >= 0) & (gap < window))[None]  # (Hkv, g * m, N + m)
    logits = torch.matmul(q, k.transpose(1, 2)) * scaling
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.matmul(weights, v).reshape(hq, m, d)
