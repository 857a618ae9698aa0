"""Checks of a run's values before any work: one-line :class:`~lava.errors.UserError` each.

Called by the single run and by the sweep (for each configuration) before anything is built
(:func:`validate`, which ends with :func:`check_config`), and by the sample loop once the prompt
context exists, before any sample is generated (:func:`check_prompt_lengths`), so a bad value never
costs sample generation, a model load or a run folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from eval.benchmarks.base import Benchmark, PromptContext
from eval.method_configs import is_full
from lava.errors import UserError

# Config key that lets a run ask for prompts longer than the model's context window on purpose
# (e.g. to measure how a method degrades past the trained length).
ALLOW_BEYOND_CONTEXT = "allow_beyond_context"
# What a benchmark's headline score may be in (eval.benchmarks.base.Benchmark.unit).
UNITS = ("percent", "fraction")


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (YAML's ``true`` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: DictConfig) -> None:
    """One-line errors for the values of a single run's config that Hydra's schema-less config cannot check."""
    for group in ("model", "method", "bench"):
        if not isinstance(cfg.get(group), DictConfig) or "name" not in cfg[group]:
            raise UserError(
                f"config group '{group}' is missing or has no 'name'; pick one with {group}=<name>"
            )
    budget, ratio = cfg.get("budget"), cfg.get("compression_ratio")
    if ratio is not None and (
        not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio < 1.0
    ):
        raise UserError(
            f"compression_ratio={ratio} is invalid; give the fraction of entries removed, in [0, 1) (e.g. 0.5)"
        )
    # The full cache keeps everything and ignores the budget, but a malformed one is still a typo; a
    # compression-ratio run derives its budget per sample.
    unbudgeted = is_full(cfg.method) or ratio is not None
    if not (budget is None and unbudgeted) and (not _is_int(budget) or budget <= 0):
        raise UserError(
            f"budget={budget} is invalid; give a positive integer (entries per KV head per layer)"
        )
    limit = cfg.get("limit")
    if limit is not None and (not _is_int(limit) or limit < 0):
        raise UserError(f"limit={limit} is invalid; give a non-negative integer or null")
    shards, shard = cfg.get("num_shards", 1), cfg.get("shard", 0)
    if not _is_int(shards) or shards < 1 or not _is_int(shard) or not 0 <= shard < shards:
        raise UserError(f"shard={shard} num_shards={shards} is invalid; need 0 <= shard < num_shards")
    check_config(cfg)
    check_model_window(cfg)
    question_setting(cfg)


#: ``bench.question``: ``aware`` compresses the question with the context (the whole prompt, today's
#: runs); ``agnostic`` compresses the context alone and prefills the question into the compressed cache.
QUESTION_SETTINGS = ("aware", "agnostic")


def question_setting(cfg: DictConfig) -> str:
    """``cfg.bench.question`` (``aware`` when absent), or a one-line error for any other value."""
    setting = cfg.bench.get("question", "aware") if isinstance(cfg.get("bench"), DictConfig) else "aware"
    if setting not in QUESTION_SETTINGS:
        raise UserError(f"bench.question={setting} is invalid; give aware or agnostic (docs/question.md)")
    return setting


def check_one_unit(given: Sequence[str]) -> None:
    """``budget`` and ``compression_ratio`` both on the command line (``given``: the override keys):
    two units for one setting, a one-line error. Only the command line can tell, as ``budget`` has a
    default."""
    if "budget" in given and "compression_ratio" in given:
        raise UserError(
            "budget= and compression_ratio= both given: they are two units for one setting; give one of them"
        )


def check_model_window(cfg: DictConfig) -> None:
    """``model.max_context`` and ``model.max_prompt_tokens``: positive integers, the prompt cap within
    the window (benchmarks that truncate, like LongBench, trust the cap and are not length-checked)."""
    model = cfg.model
    for key in ("max_context", "max_prompt_tokens"):
        value = model.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            raise UserError(f"model.{key}={value!r} is invalid; give a positive number of tokens")
    cap, window = model.get("max_prompt_tokens"), model.get("max_context")
    if cap is not None and window is not None and cap > window and not cfg.get(ALLOW_BEYOND_CONTEXT, False):
        raise UserError(
            f"model.max_prompt_tokens={cap} exceeds model.max_context={window}; lower it "
            f"or pass {ALLOW_BEYOND_CONTEXT}=true to run past the window on purpose"
        )


def check_benchmark(bench: Benchmark) -> None:
    """The contract values a bench config can set (:class:`~eval.benchmarks.base.Benchmark`)."""
    for key in ("version", "min_new_tokens"):
        value = getattr(bench, key)
        if not _is_int(value) or value < 0:
            raise UserError(f"bench.{key}={value!r} is invalid; give a non-negative integer")
    if bench.unit not in UNITS:
        raise UserError(f"bench {bench.name} declares unit={bench.unit!r}; declare one of {list(UNITS)}")


def check_config(cfg: Any) -> None:
    """Values of the top-level config that Hydra passes through untyped."""
    seed = cfg.get("seed")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"seed={seed!r} is invalid; give a non-negative integer (e.g. seed=42)")
    for switch in (ALLOW_BEYOND_CONTEXT, "progress"):
        value = cfg.get(switch, False)
        if not isinstance(value, bool):
            raise UserError(f"{switch}={value!r} is invalid; give true or false")
    root = cfg.get("output_root", "outputs")
    if not isinstance(root, (str, int)) or isinstance(root, bool) or not str(root).strip():
        raise UserError(f"output_root={root!r} is invalid; give a folder path (e.g. output_root=outputs)")
    # Sweep keys are read only by a sweep: set without methods= they would be ignored in silence.
    if cfg.get("methods") is None and cfg.get("budgets") is not None:
        budgets = list(cfg.get("budgets"))
        raise UserError(
            f"budgets={budgets} needs methods=[...] (a sweep, e.g. methods=[lava]); a single run takes budget=<N>"
        )
    if cfg.get("methods") is None and cfg.get("compression_ratios") is not None:
        ratios = list(cfg.get("compression_ratios"))
        raise UserError(
            f"compression_ratios={ratios} needs methods=[...] (a sweep); a single run takes compression_ratio=<r>"
        )
    if cfg.get("budgets") is not None and cfg.get("compression_ratios") is not None:
        raise UserError("budgets= and compression_ratios= are two units for one axis; give one of them")
    batch = cfg.get("max_decode_batch", 32)
    if not _is_int(batch) or batch < 1:
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
