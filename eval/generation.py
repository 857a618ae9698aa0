"""Greedy decoding with stop rules, timed in its two phases (prefill, decode)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from lava.compat import cache_kwargs


@dataclass
class Generation:
    """Result of one greedy generation.

    Attributes
    ----------
    token_ids : list[int]
        New tokens, the stop token included when one was hit.
    stop_reason : str
        ``"stop_token"`` or ``"length"``.
    prefill_seconds, decode_seconds : float
        Wall time of the prompt forward pass (compression included) and of the remaining steps.
    """

    token_ids: list[int]
    stop_reason: str
    prefill_seconds: float
    decode_seconds: float
    margins: list[float] = field(default_factory=list)  # top-1 minus top-2 score at each step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int],
    cache: Any,
    min_new_tokens: int = 1,
) -> Generation:
    """Generate greedily with the model's own forward, one token per step.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM.
    input_ids : Tensor, shape (1, prompt_len)
        The prompt.
    max_new_tokens : int
        Upper bound on generated tokens.
    stop_ids : iterable of int
        Token ids that end generation (EOS, end-of-turn, optional newline).
    cache : transformers.Cache
        Filled by the prefill (a compressing cache compresses there) and extended at each step.
    min_new_tokens : int
        Stop tokens are suppressed for the first ``min_new_tokens`` steps (LongBench's
        ``min_length = prompt + 1``).
    """
    if input_ids.shape[0] != 1:
        raise ValueError("greedy_generate supports batch size 1")
    device = input_ids.device
    _sync(device)
    t0 = time.perf_counter()
    logits = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits
    _sync(device)
    prefill = time.perf_counter() - t0
    (gen,) = greedy_decode(model, logits[0, -1], [cache], max_new_tokens, stop_ids, min_new_tokens)
    gen.prefill_seconds = prefill
    return gen


def _pick(scores: torch.Tensor, step: int, stop: torch.Tensor, min_new_tokens: int) -> tuple[int, float]:
    """Greedy token of one row's scores (V,), stop tokens suppressed before ``min_new_tokens``; and its
    margin over the runner-up (a margin near 0 is a floating-point tie)."""
    scores = scores.float()
    if step < min_new_tokens and stop.numel():
        scores[stop] = float("-inf")
    top = torch.topk(scores, 2).values
    return int(torch.argmax(scores)), float(top[0] - top[1])


@torch.inference_mode()
def greedy_decode(
    model: Any,
    first_logits: torch.Tensor,
    caches: list[Any],
    max_new_tokens: int,
    stop_ids: Iterable[int],
    min_new_tokens: int = 1,
) -> list[Generation]:
    """Greedy decoding of one prefilled prompt through several caches at once.

    Parameters
    ----------
    first_logits : Tensor, shape (V,)
        Next-token logits after the prompt (the same for every cache: the prefill is full attention).
    caches : list
        Prefilled caches of the prompt. One cache decodes alone (any ``transformers`` cache); several
        must be :class:`~lava.cache.CompressedCache` and decode as one batch
        (:class:`~lava.batch.BatchedCache`), a row leaving the batch when it stops.

    Returns
    -------
    list of Generation
        One per cache, in order; ``prefill_seconds`` is 0 and ``decode_seconds`` the batch's decode time.
    """
    if max_new_tokens <= 0:
        return [Generation([], "length", 0.0, 0.0) for _ in caches]
    device = first_logits.device
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in caches]
    margins: list[list[float]] = [[] for _ in caches]
    reasons = ["length"] * len(caches)
    _sync(device)
    t0 = time.perf_counter()
    token, margin = _pick(first_logits, 0, stop, min_new_tokens)
    active = []
    for row in range(len(caches)):
        tokens[row].append(token)
        margins[row].append(margin)
        if stop.numel() and bool((stop == token).any()):
            reasons[row] = "stop_token"
        elif max_new_tokens > 1:
            active.append(row)
    if active:
        if len(caches) == 1:
            batch = caches[0]
        else:
            from lava.batch import BatchedCache

            batch = BatchedCache([caches[r] for r in active])
    step = 1
    while active:
        step_ids = torch.tensor([[tokens[r][-1]] for r in active], device=device)
        logits = model(input_ids=step_ids, **cache_kwargs(model, batch), use_cache=True).logits
        still = []
        for i, row in enumerate(active):
            token, margin = _pick(logits[i, -1], step, stop, min_new_tokens)
            tokens[row].append(token)
            margins[row].append(margin)
            if stop.numel() and bool((stop == token).any()):
                reasons[row] = "stop_token"
            elif step + 1 < max_new_tokens:
                still.append(i)
        if len(still) < len(active) and still and hasattr(batch, "select"):
            batch.select(still)
        active = [active[i] for i in still]
        step += 1
    _sync(device)
    seconds = time.perf_counter() - t0
    return [Generation(tokens[r], reasons[r], 0.0, seconds, margins[r]) for r in range(len(caches))]
