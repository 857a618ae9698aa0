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
    # Question-agnostic runs: the question part's forward into the compressed cache (0 otherwise).
    question_seconds: float = 0.0


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
    question_ids: torch.Tensor | None = None,
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
    question_ids : Tensor, shape (1, q), optional
        The question-agnostic setting: ``input_ids`` is the context part alone (prefilled and
        compressed), these ids are then prefilled into the compressed cache (:func:`prefill_question`)
        and the first token follows them. None or empty: ``input_ids`` is the whole prompt.
    """
    if input_ids.shape[0] != 1:
        raise ValueError("greedy_generate supports batch size 1")
    device = input_ids.device
    _sync(device)
    t0 = time.perf_counter()
    logits = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits
    _sync(device)
    prefill = time.perf_counter() - t0
    first, question = logits[0, -1], 0.0
    if question_ids is not None and question_ids.shape[1]:
        first, question = prefill_question(model, question_ids, cache)
    (gen,) = greedy_decode(model, first, [cache], max_new_tokens, stop_ids, min_new_tokens)
    gen.prefill_seconds = prefill
    gen.question_seconds = question
    return gen


@torch.inference_mode()
def prefill_question(model: Any, question_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, float]:
    """Prefill the question part into an already prefilled (and compressed) cache.

    Its entries join the cache as decode-time entries (never evicted, as generated tokens), at the
    positions after the context's; the queries attend to the kept context entries and causally
    among themselves.

    Returns
    -------
    logits : Tensor, shape (V,)
        Next-token logits after the question (the first generated token's).
    seconds : float
        Wall time of the forward.
    """
    device = question_ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=question_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    _sync(device)
    return out.logits[0, -1], time.perf_counter() - t0


@torch.inference_mode()
def prefill_question_batch(
    model: Any, question_ids: torch.Tensor, caches: list[Any]
) -> tuple[torch.Tensor, float]:
    """:func:`prefill_question` for several compressed caches of one context, in one forward.

    The caches hold the same context, so they sit at the same position and the question's positions
    are the same in every row. They run as one :class:`~lava.batch.BatchedCache`: each row's queries
    attend to its own kept entries and causally among themselves
    (:func:`lava.varlen.varlen_attention`, the same sums in another order than a cache alone, so
    equal up to float rounding), and the question's entries are appended to each cache itself. A
    hybrid model's sliding windows step in the batch and are then written back to each cache
    (:meth:`~lava.batch.BatchedCache.write_back_windows`): afterwards each cache holds what
    :func:`prefill_question` would have left in it.

    Parameters
    ----------
    question_ids : Tensor, shape (1, q), q >= 2
        The question part (a one-token forward would decode in the batch's own buffers, which never
        reach the caches).
    caches : list of CompressedCache
        Prefilled with the same context, no decode step yet.

    Returns
    -------
    logits : Tensor, shape (B, V)
        Per cache, the next-token logits after the question (the first generated token's).
    seconds : float
        Wall time of the whole batch (building it, the forward, the write-back).
    """
    from lava.batch import BatchedCache

    if question_ids.shape[1] < 2:
        raise ValueError(f"a batched question prefill needs at least 2 tokens, got {question_ids.shape[1]}")
    device = question_ids.device
    _sync(device)
    t0 = time.perf_counter()
    batch = BatchedCache(caches)
    ids = question_ids.expand(len(caches), -1)
    out = model(input_ids=ids, **cache_kwargs(model, batch), use_cache=True, logits_to_keep=1)
    batch.write_back_windows()
    _sync(device)
    return out.logits[:, -1], time.perf_counter() - t0


def _pick(
    logits: torch.Tensor, step: int, stop: torch.Tensor, min_new_tokens: int
) -> tuple[torch.Tensor, list[tuple[int, float, bool]]]:
    """The greedy step of every row at once, on the logits' device, read on the host in one transfer.

    Parameters
    ----------
    logits : Tensor, shape (B, V)
        Next-token scores of each row (not modified).
    step : int
        Index of the token being chosen; stop tokens are suppressed while ``step < min_new_tokens``.
    stop : Tensor, shape (S,), int64
        Stop token ids, on the logits' device (may be empty).

    Returns
    -------
    tokens : Tensor, shape (B,), int64
        The chosen tokens, on the device (the next step's input ids).
    rows : list of (int, float, bool)
        Per row: the token, its margin over the runner-up (top-1 minus top-2 score; near 0 is a
        floating-point tie) and whether it is a stop token.
    """
    scores = logits.float()
    if step < min_new_tokens and stop.numel():
        scores = scores.index_fill(1, stop, float("-inf"))
    top = torch.topk(scores, 2, dim=-1).values
    tokens = torch.argmax(scores, dim=-1)  # the first of equal maxima, as for one row
    stopped = torch.isin(tokens, stop) if stop.numel() else torch.zeros_like(tokens, dtype=torch.bool)
    # One small (3, B) transfer per step; float64 holds token ids and the float32 margins exactly.
    host = torch.stack([tokens.double(), (top[:, 0] - top[:, 1]).double(), stopped.double()]).tolist()
    return tokens, [(int(t), m, bool(s)) for t, m, s in zip(*host)]


@torch.inference_mode()
def greedy_decode(
    model: Any,
    first_logits: torch.Tensor,
    caches: list[Any],
    max_new_tokens: int,
    stop_ids: Iterable[int],
    min_new_tokens: int = 1,
    take_storage: bool = False,
) -> list[Generation]:
    """Greedy decoding of one prefilled prompt through several caches at once.

    Each step selects the tokens of the whole batch on the logits' device and reads tokens, margins
    and stop flags on the host in one transfer (:func:`_pick`); the next step's input ids stay on the
    device (a row that stops leaves through ``index_select``).

    Parameters
    ----------
    first_logits : Tensor, shape (V,) or (B, V)
        Next-token logits after the prompt: one row for every cache (the prefill is full attention),
        or one per cache (the question-agnostic setting: each cache prefilled its question itself).
    caches : list
        Prefilled caches of the prompt. One cache decodes alone (any ``transformers`` cache); several
        must be :class:`~lava.cache.CompressedCache` and decode as one batch
        (:class:`~lava.batch.BatchedCache`), a row leaving the batch when it stops.
    take_storage : bool
        Let the batch release each cache's buffers once it has copied them (one copy of the entries,
        not two; the caches can then only report, not attend). For callers that drop the caches after.

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
    if first_logits.dim() == 1:  # the same first token for every cache: picked once, given to each row
        first, ((token, margin, stopped),) = _pick(first_logits[None], 0, stop, min_new_tokens)
        first, picked = first.expand(len(caches)), [(token, margin, stopped)] * len(caches)
    else:
        first, picked = _pick(first_logits, 0, stop, min_new_tokens)
    active = []
    for row, (token, margin, stopped) in enumerate(picked):
        tokens[row].append(token)
        margins[row].append(margin)
        if stopped:
            reasons[row] = "stop_token"
        elif max_new_tokens > 1:
            active.append(row)
    if active:
        index = torch.tensor(active, device=device)
        last = first.index_select(0, index).contiguous()  # (B,) the next input ids, on the device
        if len(caches) == 1:
            batch = caches[0]
        else:
            from lava.batch import BatchedCache

            batch = BatchedCache([caches[r] for r in active], take_storage=take_storage)
    step = 1
    while active:
        logits = model(input_ids=last[:, None], **cache_kwargs(model, batch), use_cache=True).logits
        last, picked = _pick(logits[:, -1], step, stop, min_new_tokens)
        still = []
        for i, (row, (token, margin, stopped)) in enumerate(zip(active, picked)):
            tokens[row].append(token)
            margins[row].append(margin)
            if stopped:
                reasons[row] = "stop_token"
            elif step + 1 < max_new_tokens:
                still.append(i)
        if still and len(still) < len(active):  # rows left: the batch and its input ids shrink
            index = torch.tensor(still, device=device)
            last = last.index_select(0, index)
            if hasattr(batch, "select"):
                batch.select(still)
        active = [active[i] for i in still]
        step += 1
    _sync(device)
    seconds = time.perf_counter() - t0
    return [Generation(tokens[r], reasons[r], 0.0, seconds, margins[r]) for r in range(len(caches))]
