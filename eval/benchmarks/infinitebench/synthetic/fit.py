"""Fitting a generated example to a token budget: the largest unit count whose prompt fits."""

from __future__ import annotations

from collections.abc import Callable


class BudgetTooSmall(ValueError):
    """Even the smallest unit count exceeds the budget."""


def fit_units(measure: Callable[[int], int], budget: int, *, guess: int, lower: int = 1) -> int:
    """Return a unit count ``n >= lower`` with ``measure(n) <= budget`` that leaves less than one unit free.

    ``measure(n)`` is the token length of the prompt built from ``n`` units (noise lines, records,
    numbers, functions); it grows about linearly. The search starts at ``guess`` (the previous
    sample's count, so a sweep usually costs one measurement per sample), jumps by linear
    interpolation and falls back to bisection, so it ends in a few tokenizations even at 128k.

    Parameters
    ----------
    measure : callable
        Unit count -> prompt tokens.
    budget : int
        Largest allowed token length.
    guess : int
        Starting count.
    lower : int
        Smallest meaningful count.

    Raises
    ------
    BudgetTooSmall
        ``measure(lower) > budget``.
    """
    seen: dict[int, int] = {}

    def tokens(n: int) -> int:
        if n not in seen:
            seen[n] = measure(n)
        return seen[n]

    lo, hi = None, None  # largest count known to fit, smallest known not to
    n = max(lower, guess)
    bisect_next = False
    while True:
        t = tokens(n)
        if t <= budget:
            # Another unit costs about t/n tokens; with fewer left, n is as good as the maximum.
            if budget - t < max(1.0, t / n):
                return n
            lo = n
        elif n == lower:
            raise BudgetTooSmall(f"{lower} units already take {t} tokens > {budget}")
        else:
            hi = n
        if lo is not None and hi is not None:
            if hi - lo <= 1:
                return lo
            if bisect_next:
                n = (lo + hi) // 2
            else:  # linear interpolation between the bracket ends
                t_lo, t_hi = tokens(lo), tokens(hi)
                n = lo + int((budget - t_lo) * (hi - lo) / max(1, t_hi - t_lo))
            n = min(max(n, lo + 1), hi - 1)
            # Alternating with bisection bounds the search to ~2 log2(range) steps whatever the shape.
            bisect_next = not bisect_next
        elif lo is None:  # only overshoots so far: scale down
            n = max(lower, min(int(n * budget / t), n - 1))
        else:  # only undershoots so far: scale up
            n = max(lo + 1, int(n * budget / t))
