"""Offline generators for the six synthetic InfiniteBench tasks, fitted to a token budget.

Every generator is ``make(index, total, units, seed) -> Example``: deterministic in its arguments,
``units`` being the quantity that sets the length (noise lines, JSON records, list elements,
operands, functions). :func:`generate` picks, per sample, the largest unit count whose prompt
fits the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from eval.benchmarks.infinitebench.synthetic.arithmetic import math_calc, math_find
from eval.benchmarks.infinitebench.synthetic.code_run import DEPTHS, code_run
from eval.benchmarks.infinitebench.synthetic.fit import BudgetTooSmall, fit_units
from eval.benchmarks.infinitebench.synthetic.retrieval import kv_retrieval, number_string, passkey
from eval.benchmarks.infinitebench.tasks import Example
from lava.errors import UserError


@dataclass(frozen=True)
class Generator:
    """A task's generator, its smallest meaningful unit count and a first guess per 1k tokens."""

    make: Callable[[int, int, int, int], Example]
    lower: int
    units_per_1k: int


GENERATORS: dict[str, Generator] = {
    "passkey": Generator(passkey, 1, 40),
    "number_string": Generator(number_string, 1, 40),
    "kv_retrieval": Generator(kv_retrieval, 2, 14),
    "math_find": Generator(math_find, 8, 280),
    "math_calc": Generator(math_calc, 2, 250),
    "code_run": Generator(code_run, max(DEPTHS), 45),
}


def generate(
    task: str, num_samples: int, budget: int, measure: Callable[[Example], int], seed: int
) -> Iterator[Example]:
    """Yield ``num_samples`` examples of ``task`` whose prompts take at most ``budget`` tokens.

    Parameters
    ----------
    task : str
        One of :data:`GENERATORS`.
    num_samples : int
        Samples to generate; depths and sub-tasks are spread over them.
    budget : int
        Token budget of the whole prompt.
    measure : callable
        Example -> prompt length in tokens (the benchmark's prompt, the model's tokenizer).
    seed : int
        Run seed; sample ``i`` depends only on ``(task, seed, i, num_samples, units)``.
    """
    gen = GENERATORS[task]
    guess = max(gen.lower, gen.units_per_1k * budget // 1000)
    for index in range(num_samples):

        def tokens(units: int, index: int = index) -> int:
            return measure(gen.make(index, num_samples, units, seed))

        try:
            units = fit_units(tokens, budget, guess=guess, lower=gen.lower)
        except BudgetTooSmall as exc:
            raise UserError(
                f"bench.max_length={budget} is too short for InfiniteBench {task} ({exc}); raise it"
            ) from None
        guess = units  # neighbours need about as many units: usually one measurement each
        example = gen.make(index, num_samples, units, seed)
        example.meta["target_tokens"] = budget
        yield example
