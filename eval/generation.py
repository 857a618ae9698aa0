"""Greedy decoding with stop rules, timed in its two phases (prefill, decode)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
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
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=input_ids.device)
    device = input_ids.device
    new: list[int] = []
    reason = "length"

    _sync(device)
    t0 = time.perf_counter()
    logits = model(input_ids=input_ids, **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1).logits
    _sync(device)
    t1 = time.perf_counter()
    for step in range(max_new_tokens):
        scores = logits[0, -1].float()
        if step < min_new_tokens and stop.numel():
            scores[stop] = float("-inf")
        token = int(torch.argmax(scores))
        new.append(token)
        if stop.numel() and bool((stop == token).any()):
            reason = "stop_token"
            break
        if step + 1 == max_new_tokens:
            break
        step_ids = torch.tensor([[token]], device=device)
        logits = model(input_ids=step_ids, **cache_kwargs(model, cache), use_cache=True).logits
    _sync(device)
    t2 = time.perf_counter()
    return Generation(new, reason, t1 - t0, t2 - t1)
