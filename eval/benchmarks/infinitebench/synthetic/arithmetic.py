"""Math.Find and Math.Calc generators (``generate_random_list`` in data/construct_synthetic_dataset.py).

The unit is one list element (math_find) or one operand (math_calc). Each element is drawn after the
ones before it, so a shorter example is a prefix of a longer one with the same seed.
"""

from __future__ import annotations

from eval.benchmarks.infinitebench.synthetic.retrieval import rng_for
from eval.benchmarks.infinitebench.tasks import Example

MIN_VALUE, MAX_VALUE = 0, 99

# The seven math_find sub-tasks, 50 samples each in this order upstream.
FIND_TARGETS: tuple[str, ...] = (
    "largest number",
    "second largest number",
    "third largest number",
    "smallest number",
    "second smallest number",
    "third smallest number",
    "median",
)
# `inputs` of generate_math_qa (verbatim pattern): "... The <target> of the list is: ".
FIND_INPUT = "You should answer with only one number, no other words. The {target} of the list is: "
# The released math_calc.jsonl input (the script's own "The value of the numerical expression is: "
# is not what was released); the yarn_mistral template does not use it.
CALC_INPUT = "What's the intermediate results of the given numerical expression?"


def find_target(index: int, total: int) -> str:
    """Sub-task of sample ``index``: the seven targets in equal consecutive blocks (upstream order)."""
    return FIND_TARGETS[min(len(FIND_TARGETS) - 1, index * len(FIND_TARGETS) // total)]


# target -> (descending order?, rank among the distinct values)
_FIND_RANKS: dict[str, tuple[bool, int]] = {
    "largest number": (True, 0),
    "second largest number": (True, 1),
    "third largest number": (True, 2),
    "smallest number": (False, 0),
    "second smallest number": (False, 1),
    "third smallest number": (False, 2),
}


def find_answer(values: list[int], target: str) -> int | float:
    """The asked statistic of ``values``.

    "second largest" is the largest value below the maximum (upstream removes every copy of the
    maximum, then takes the maximum again). The median of an even count is the float mean of the
    two middle values.
    """
    if target == "median":
        ordered = sorted(values)
        mid = len(ordered) // 2
        if len(ordered) % 2 == 1:
            return ordered[mid]
        return (ordered[mid] + ordered[mid - 1]) / 2
    descending, rank = _FIND_RANKS[target]
    distinct = sorted(set(values), reverse=descending)
    if rank >= len(distinct):
        raise ValueError(f"no {target} in a list with {len(distinct)} distinct values")
    return distinct[rank]


def math_find(index: int, total: int, units: int, seed: int) -> Example:
    """A list of ``units`` ints in 0..99 and one statistic of it to find."""
    rng = rng_for("math_find", seed, index)
    target = find_target(index, total)
    low, high = MIN_VALUE, MAX_VALUE
    lower_high = "largest" in target or (target == "median" and rng.random() <= 0.5)
    if lower_high:  # the largest family (and half the medians) lowers the upper bound to 80-100 %
        high = rng.randint(int(MAX_VALUE * 0.8), MAX_VALUE)
    else:  # the smallest family (and the other medians) raises the lower bound to at most 20 %
        low = rng.randint(MIN_VALUE, int(MAX_VALUE * 0.2))
    values = [rng.randint(low, high) for _ in range(units)]
    return Example(
        id=index,
        context=str(values),
        input=FIND_INPUT.format(target=target),
        answer=[find_answer(values, target)],
        meta={"units": units, "target": target},
    )


def math_calc(index: int, total: int, units: int, seed: int) -> Example:
    """An expression of ``units`` operands in 0..99 whose running value never leaves 0..99.

    Each operand is drawn in 0..99, then the sign; an operand that would leave the range is redrawn
    in the allowed range. The answer is the running value after each operation (the first operand
    itself is not part of it, as in the released data).
    """
    rng = rng_for("math_calc", seed, index)
    value = rng.randint(MIN_VALUE, MAX_VALUE)
    parts = [str(value)]
    values: list[int] = []
    for _ in range(1, units):
        operand = rng.randint(MIN_VALUE, MAX_VALUE)
        if rng.random() > 0.5:
            if value + operand > MAX_VALUE:
                operand = rng.randint(MIN_VALUE, MAX_VALUE - value)
            parts.append(f"+ {operand}")
            value += operand
        else:
            if value - operand < 0:
                operand = rng.randint(MIN_VALUE, value)
            parts.append(f"- {operand}")
            value -= operand
        values.append(value)
    return Example(
        id=index,
        context=" ".join(parts),
        input=CALC_INPUT,
        answer=values,
        meta={"units": units},
    )
