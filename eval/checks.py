"""Checks of a run's values before any work: one-line :class:`~lava.errors.UserError` each.

Called by the runner right after the config is validated (:func:`check_config`) and once the prompt
context exists, before any sample is generated (:func:`check_prompt_lengths`), so a bad value never
costs sample generation, a model load or a run folder.
"""

from __future__ import annotations

from typing import Any

from eval.benchmarks.base import Benchmark, PromptContext
from lava.errors import UserError

# Config key that lets a run ask for prompts longer than the model's context window on purpose
# (e.g. to measure how a method degrades past the trained length).
ALLOW_BEYOND_CONTEXT = "allow_beyond_context"


def check_config(cfg: Any) -> None:
    """Values of the top-level config that Hydra passes through untyped."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed={seed!r} is invalid; give a non-negative integer (e.g. seed=42)")
    allow = cfg.get(ALLOW_BEYOND_CONTEXT, False)
    if not isinstance(allow, bool):
        raise UserError(f"{ALLOW_BEYOND_CONTEXT}={allow!r} is invalid; give true or false")
    # Sweep keys are read only by a sweep: set without methods= they would be ignored in silence.
    if cfg.get("methods") is None and cfg.get("budgets") is not None:
        budgets = list(cfg.get("budgets"))
        raise UserError(
            f"budgets={budgets} needs methods=[...] (a sweep, e.g. methods=[lava]); a single run takes budget=<N>"
        )
    batch = cfg.get("max_decode_batch", 32)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise UserError(f"max_decode_batch={batch!r} is invalid; give a positive integer (e.g. 32)")


def check_prompt_lengths(bench: Benchmark, ctx: PromptContext, max_context: int, cfg: Any) -> None:
    """Refuse a benchmark config whose longest prompt exceeds ``max_context`` tokens.

    The benchmark says how long its config asks prompts to be
    (:meth:`~eval.benchmarks.base.Benchmark.requested_prompt_tokens`); benchmarks that truncate to the
    model's window themselves (LongBench) say None. ``allow_beyond_context=true`` lets it through.
    """
    requested = bench.requested_prompt_tokens(ctx)
    if requested is None or requested <= max_context or cfg.get(ALLOW_BEYOND_CONTEXT, False):
        return
    raise UserError(
        f"bench {bench.name} asks for prompts of {requested} tokens, beyond model.max_context={max_context}; "
        f"lower the benchmark's lengths or pass {ALLOW_BEYOND_CONTEXT}=true to run past the window on purpose"
    )
