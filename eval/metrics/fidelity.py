"""Fidelity of a compressed cache to the full one: pure functions on logits and attention tensors.

Two families of measures, both computed on the same teacher-forced continuation:

- end to end, on the next-token distributions: :func:`next_token_kl` (KL(full || compressed), nats
  per position), :func:`top1_agreement` and :func:`token_nll` (for the NLL difference);
- per layer, the error of the layer's attention output (LAVa's layer-wise objective):
  :func:`packed_causal_attention` computes the continuation's attention over what a compressed cache
  kept, :func:`relative_l2` compares it with the full-cache output.

Everything is computed in float64 or float32 regardless of the model's dtype, so that the measures
do not depend on bf16 rounding.
"""

from __future__ import annotations

import torch

# Metrics where a lower value is better; benchmarks expose this set as ``lower_is_better``.
LOWER_IS_BETTER = frozenset({"kl", "nll_delta", "attn_err"})


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float64 log-softmax over the vocabulary: (m, V) -> (m, V)."""
    return torch.log_softmax(logits.double(), dim=-1)


def kl_from_log_probs(
    log_p: torch.Tensor, log_q: torch.Tensor, p: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(p || q) per position from float64 log-probabilities (m, V) -> (m,), in nats.

    ``p`` (= ``log_p.exp()``) may be passed when it is reused for many ``q``.
    """
    return ((log_p.exp() if p is None else p) * (log_p - log_q)).sum(dim=-1)


def nll_from_log_probs(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` (m,) under log-probabilities (m, V); (m,) float64."""
    return -log_p.gather(1, targets.long().view(-1, 1)).squeeze(1)


def next_token_kl(full_logits: torch.Tensor, compressed_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_full || p_compressed) of the softmax distributions at each position, in nats.

    Parameters
    ----------
    full_logits, compressed_logits : Tensor, shape (m, V)

    Returns
    -------
    Tensor, shape (m,), float64
    """
    return kl_from_log_probs(log_probs(full_logits), log_probs(compressed_logits))


def top1_agreement(full_logits: torch.Tensor, compressed_logits: torch.Tensor) -> torch.Tensor:
    """1.0 where the two argmax tokens agree, else 0.0. Shapes (m, V) -> (m,) float64."""
    return (full_logits.argmax(dim=-1) == compressed_logits.argmax(dim=-1)).double()


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` (m,) under ``logits`` (m, V), in nats; (m,) float64."""
    return nll_from_log_probs(log_probs(logits), targets)


def relative_l2(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact|| / ||exact||`` over all elements (Frobenius norm); 0 when both are zero."""
    approx, exact = approx.double(), exact.double()
    denom = torch.linalg.vector_norm(exact)
    diff = torch.linalg.vector_norm(approx - exact)
    if float(denom) == 0.0:
        return 0.0 if float(diff) == 0.0 else float("inf")
    return float(diff / denom)


def packed_causal_attention(
    query: torch.Tensor,
    prompt_keys: torch.Tensor,
    prompt_values: torch.Tensor,
    row_head: torch.Tensor,
    new_keys: torch.Tensor,
    new_values: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """Attention of ``m`` new queries over a per-head prompt cache plus their own keys (causal).

    Query head ``h`` belongs to KV head ``h // (Hq / Hkv)`` (grouped-query attention). It sees every
    prompt row of its KV head and the new tokens up to and including its own position.

    Parameters
    ----------
    query : Tensor, shape (Hq, m, d)
        Post-RoPE queries of the new tokens.
    prompt_keys, prompt_values : Tensor, shape (N, d)
        Kept prompt entries of all KV heads as rows, in any order.
    row_head : Tensor, shape (N,), int64
        KV head of each prompt row.
    new_keys, new_values : Tensor, shape (Hkv, m, d)
        The new tokens' own (post-RoPE) keys and values.
    scaling : float
        Softmax scale (usually ``d ** -0.5``).

    Returns
    -------
    Tensor, shape (Hq, m, d), float32
    """
    hq, m, d = query.shape
    hkv = new_keys.shape[0]
    group = hq // hkv
    causal = torch.ones(m, m, dtype=torch.bool, device=query.device).tril()
    out = query.new_empty((hq, m, d), dtype=torch.float32)
    row_head = row_head.to(prompt_keys.device)
    for head in range(hkv):
        rows = row_head == head
        keys = torch.cat([prompt_keys[rows], new_keys[head]]).float()  # (n_h + m, d)
        values = torch.cat([prompt_values[rows], new_values[head]]).float()
        q = query[head * group : (head + 1) * group].float()  # (g, m, d)
        logits = torch.matmul(q, keys.T) * scaling  # (g, m, n_h + m)
        n_h = keys.shape[0] - m
        logits[:, :, n_h:] = logits[:, :, n_h:].masked_fill(~causal, float("-inf"))
        out[head * group : (head + 1) * group] = torch.matmul(torch.softmax(logits, dim=-1), values)
    return out
