"""kvpress's unit, a compression ratio, as this project's budget: per prompt, the B0 it means.

kvpress's presses remove the fraction ``ratio`` of a prompt's entries: each head keeps
``int(n * (1 - ratio))`` of the ``n`` it scored. Here a method's budget B0 counts the entries kept per
KV head on average, window included, so a ratio names one budget per prompt length:
:func:`budget_for_ratio`. With uniform allocation every head then keeps what kvpress's head keeps;
a dynamic allocator moves the same total between layers and heads.
"""

from __future__ import annotations

import dataclasses

from lava.errors import UserError
from lava.method import CompressionMethod


def budget_for_ratio(prompt_len: int, ratio: float, window: int) -> int:
    """The budget (entries per KV head, window included) that removes ``ratio`` of ``prompt_len`` entries.

    ``int(prompt_len * (1 - ratio))`` as kvpress rounds its kept count (towards zero), raised to
    ``window + 1`` where that is smaller (a budget keeps its window and at least one scored entry),
    so a ratio close to 1 on a short prompt removes less than asked. A budget at or above
    ``prompt_len`` evicts nothing (ratio 0).

    Parameters
    ----------
    prompt_len : int
        Entries the method compresses: the whole prompt (question-aware) or its context part
        (question-agnostic).
    ratio : float
        Fraction removed, in [0, 1).
    window : int
        The method's window.
    """
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"compression_ratio={ratio} is invalid; give a fraction in [0, 1)")
    return max(window + 1, int(prompt_len * (1 - ratio)))


def at_ratio(method: CompressionMethod, prompt_len: int, ratio: float) -> CompressionMethod:
    """``method`` with the budget that removes ``ratio`` of a ``prompt_len``-entry prompt (a copy)."""
    return dataclasses.replace(method, budget=budget_for_ratio(prompt_len, ratio, method.window))
