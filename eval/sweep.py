"""A sweep: every (method, budget) of ``methods=[...] budgets=[...]`` from one prefill per sample.

    python run.py bench=niah methods=all budgets=[64,128,256]
    python run.py bench=niah methods=[full,snapkv,lava] budgets=[128]

Per sample the prompt is prefilled once with full attention (:func:`lava.prefill.capture_prefill`);
each distinct scorer runs once per layer; each configuration's cache is built from the shared
prefill with its own allocation (:func:`lava.prefill.build_cache_from_capture`); the compressed configurations
decode together, at most ``max_decode_batch`` per batch (in the question-agnostic setting their
question forwards are batched the same way first), and the full cache decodes alone over the
prefill's ``DynamicCache`` (the captured keys and values themselves, no copy), first; each cache
is freed as soon as its configuration is decoded and recorded. Each configuration writes exactly
the run folder its single run (``method=<m> budget=<B>``) writes, so a sweep resumes single runs
and vice versa; records are appended per configuration as each sample finishes, so a killed sweep
redoes, per folder, only the samples that folder lacks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from eval.benchmarks.base import Benchmark, Sample
from eval.checks import check_config, validate
from eval.generation import Generation, greedy_decode, prefill_question, prefill_question_batch
from eval.method_configs import (
    build_method,
    configurations,
    resolve_budgets,
    resolve_methods,
    resolve_ratios,
    single_config,
)
from eval.run_folder import RunSummary, make_record, memory_lines, run_dir_for
from eval.sample_loop import SampleLoop, Target, build_benchmark, run_loop
from lava.policy import scorer_key

# The sweep's phases, summed over its samples (each shared by the configurations of a sample).
SWEEP_PHASES = ("prefill", "scoring", "allocation", "decode")


@dataclass
class SweepSummary:
    runs: list[RunSummary]
    elapsed_seconds: float
    samples: int
    phase_seconds: dict[str, float]
    score: float = math.nan
    samples_seconds: float = math.nan  # the sample loop alone (model loaded): what the new samples cost
    device_memory: dict[str, Any] | None = None  # on CUDA (eval.device_memory): weights, peak, device

    def format(self) -> str:
        lines = [
            "",
            f"  sweep: {len(self.runs)} configurations x {self.samples} samples in {self.elapsed_seconds:.1f} s",
        ]
        lines.append("  " + "  ".join(f"{k} {v:.1f} s" for k, v in self.phase_seconds.items()))
        lines += memory_lines(self.device_memory)
        for summary in self.runs:
            lines.append(
                f"    {summary.score:8.4f} {summary.headline_metric}  {summary.num_samples} samples "
                f"({summary.new_samples} new)  {summary.run_dir}"
            )
        return "\n".join(lines)


@dataclass
class SharedPrefill:
    """What one prefill gives every configuration of a sample.

    Attributes
    ----------
    logits : Tensor, shape (V,) or (C, V)
        Next-token logits after the prompt; after :meth:`prefill_question`, one row per cache.
    caches : list
        Per requested method: its :class:`~lava.cache.CompressedCache`, or, for ``None`` (the full
        cache), a ``DynamicCache`` of the prefill.
    seconds : dict
        ``prefill`` (the forward), ``scoring`` per scorer key, ``allocation`` per cache index, and
        after :meth:`prefill_question` ``question`` per cache index (its share of a batched forward).
    """

    logits: Any
    caches: list[Any]
    seconds: dict[str, Any]

    def prefill_question(self, model: Any, question_ids: Any, max_batch: int = 1) -> None:
        """The question-agnostic setting: prefill the question part into every cache.

        Each cache sees its own kept context entries, so the first tokens differ by cache. The full
        cache (a ``DynamicCache``) runs its own forward; the compressed caches run in batches of at
        most ``max_batch`` rows (:func:`eval.generation.prefill_question_batch`; the sweep's
        ``max_decode_batch``). A batch of one is :func:`eval.generation.prefill_question` itself,
        the single run's computation, so ``max_batch=1`` gives exactly the single runs' logits and
        caches; larger batches give them up to float rounding. A question of one token goes cache
        by cache (a one-token batched forward would step in the batch's own buffers).

        Sets ``self.logits`` to the stacked (C, V) rows and ``self.seconds["question"]`` to a list of
        C seconds: a cache's share of its forward's wall time, the batch's divided by its rows.
        """
        import torch

        from lava.cache import CompressedCache

        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}; give a positive integer")
        rows: list[Any] = [None] * len(self.caches)
        seconds = [0.0] * len(self.caches)
        compressed = [i for i, c in enumerate(self.caches) if isinstance(c, CompressedCache)]
        size = max_batch if question_ids.shape[1] > 1 else 1
        batches = [[i] for i, c in enumerate(self.caches) if not isinstance(c, CompressedCache)]
        batches += [compressed[s : s + size] for s in range(0, len(compressed), size)]
        for batch in batches:
            if len(batch) == 1:
                (i,) = batch
                rows[i], seconds[i] = prefill_question(model, question_ids, self.caches[i])
                continue
            logits, spent = prefill_question_batch(model, question_ids, [self.caches[i] for i in batch])
            for k, i in enumerate(batch):
                rows[i], seconds[i] = logits[k], spent / len(batch)
        self.logits = torch.stack(rows)
        self.seconds["question"] = seconds


def shared_prefill(model: Any, input_ids: Any, methods: list[Any], reserve: int) -> SharedPrefill:
    """Prefill once and build the cache of every method (``None`` = the full cache)."""
    from lava.prefill import (
        build_cache_from_capture,
        capture_prefill,
        capture_queries,
        score_methods,
        synchronize,
    )

    compressing = [m for m in methods if m is not None]
    t0 = time.perf_counter()
    capture, logits = capture_prefill(model, input_ids, capture_queries(compressing))
    synchronize(logits)
    prefill = time.perf_counter() - t0
    scored, scoring = score_methods(capture, compressing)
    caches = []
    for method in methods:
        if method is None:
            caches.append(capture.to_dynamic(model))
        else:
            caches.append(build_cache_from_capture(method, capture, scored.get(scorer_key(method)), reserve))
    capture.release()
    allocation = [getattr(c, "timings", {}).get("allocation", 0.0) for c in caches]
    return SharedPrefill(logits, caches, {"prefill": prefill, "scoring": scoring, "allocation": allocation})


def decode_all(
    model: Any,
    prefill: SharedPrefill,
    methods: list[Any],
    max_new_tokens: int,
    stops: list[int],
    min_new: int,
    max_batch: int,
    on_done: Callable[[int, Generation, Any], None] | None = None,
) -> list[Generation]:
    """Greedy decode every cache of ``prefill``: the full cache alone, the compressed ones in batches.

    Parameters
    ----------
    on_done : callable, optional
        ``on_done(index, generation, cache)``, called for each configuration as soon as it is decoded;
        its cache is then dropped from ``prefill.caches`` (set to None) so its memory is free before
        the next batch decodes: the full cache (the prefill's own keys and values) goes before any
        compressed one decodes. Without it every cache stays in ``prefill.caches``.
    """
    gens: list[Generation | None] = [None] * len(methods)
    compressed = [i for i, m in enumerate(methods) if m is not None]
    # The full cache alone first (freed before the batches when on_done is given), then the batches.
    batches = [[i] for i, m in enumerate(methods) if m is None]
    batches += [compressed[s : s + max_batch] for s in range(0, len(compressed), max_batch)]
    for rows in batches:
        out = greedy_decode(
            model,
            prefill.logits if prefill.logits.dim() == 1 else prefill.logits[rows],
            [prefill.caches[i] for i in rows],
            max_new_tokens,
            stops,
            min_new,
            take_storage=on_done is not None,  # the caches are dropped after: one copy of their entries
        )
        for i, gen in zip(rows, out):
            gens[i] = gen
            if on_done is not None:
                on_done(i, gen, prefill.caches[i])
                prefill.caches[i] = None
    return gens


@dataclass
class SampleRecords:
    """Writes one sample's record per configuration as soon as it is decoded (``decode_all``'s ``on_done``).

    ``targets[k]`` is the run folder of the sample's ``k``-th cache; ``prefill_seconds`` the shared
    prefill's (:class:`SharedPrefill`); ``self.seconds`` the time spent here, kept out of the decode phase.
    """

    sample: Sample
    bench: Benchmark
    tokenizer: Any
    prompt_ids: list[int]
    prefill_seconds: dict[str, Any]
    targets: list[Target]
    seconds: float = 0.0
    context_tokens: int | None = None  # the question-agnostic setting's context part
    methods: list[Any] | None = None  # per target, the method the sample ran (None: the targets')

    def __call__(self, k: int, gen: Generation, cache: Any) -> None:
        t0 = time.perf_counter()
        target, shared = self.targets[k], self.prefill_seconds
        method = target.method if self.methods is None else self.methods[k]
        scoring = shared["scoring"].get(scorer_key(method), 0.0) if method else 0.0
        times = {
            "prefill_seconds": shared["prefill"],  # shared by the sample's configurations
            "scoring_seconds": scoring,  # shared by the configurations of the same scorer
            "allocation_seconds": shared["allocation"][k],
            "decode_seconds": gen.decode_seconds,  # the decode batch's
        }
        if "question" in shared:
            times["question_seconds"] = shared["question"][k]  # its share of its question batch's forward
        record = make_record(
            self.sample, self.bench, self.tokenizer, self.prompt_ids, gen, cache, times, self.context_tokens
        )
        if target.cfg.get("compression_ratio") is not None:
            record["budget"] = method.budget
        target.write(record)
        self.seconds += time.perf_counter() - t0


@dataclass
class SweepStep:
    """A sweep's work on one sample (:func:`eval.sample_loop.run_loop`'s ``per_sample``): one shared
    prefill, then every configuration that lacks the sample decoded (or, for a teacher-forced
    benchmark, scored against the full cache's continuation); ``phases`` sums :data:`SWEEP_PHASES`."""

    bench: Benchmark
    max_batch: int
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SWEEP_PHASES, 0.0))

    def __call__(self, loop: SampleLoop, sample: Sample, pending: list[Target]) -> None:
        prompt_ids, stops, input_ids = loop.inputs(sample)
        methods = [t.method for t in pending]  # re-derived below for compression-ratio runs
        if (
            self.bench.teacher_forced
        ):  # no decoding: every cache is scored against the full cache's continuation
            prefill = shared_prefill(loop.model, input_ids, [*methods, None], sample.max_new_tokens)
            t0 = time.perf_counter()
            records = self.bench.run_prefilled(
                loop.model,
                prefill.caches[-1],
                prefill.caches[:-1],
                prompt_ids,
                sample,
                prefill.seconds["prefill"],
                self.max_batch,
            )
            self._add(prefill.seconds, time.perf_counter() - t0)
            for target, record in zip(pending, records):
                target.write(record)
            return
        # Question-agnostic: the context part is prefilled once for all, the question into every
        # cache (the compressed ones in batches of max_batch rows).
        context = loop.context_tokens(sample, prompt_ids)
        split = len(prompt_ids) if context is None else context
        question = len(prompt_ids) - split
        methods = [t.method_for(split) for t in pending]  # a compression-ratio run: this sample's budget
        prefill = shared_prefill(loop.model, input_ids[:, :split], methods, sample.max_new_tokens + question)
        if context is not None:
            prefill.prefill_question(loop.model, input_ids[:, split:], self.max_batch)
        recorder = SampleRecords(
            sample,
            self.bench,
            loop.tokenizer,
            prompt_ids,
            prefill.seconds,
            pending,
            context_tokens=context,
            methods=methods,
        )
        t0 = time.perf_counter()
        # Each cache is dropped as soon as its record is written (decode_all's on_done).
        decode_all(
            loop.model, prefill, methods, sample.max_new_tokens, stops, loop.min_new, self.max_batch, recorder
        )
        self._add(prefill.seconds, time.perf_counter() - t0 - recorder.seconds)

    def _add(self, prefill_seconds: dict[str, Any], decode_seconds: float) -> None:
        """Add one sample's shared prefill phases (:func:`shared_prefill`'s ``seconds``) and its decode time."""
        self.phases["decode"] += decode_seconds
        self.phases["prefill"] += prefill_seconds["prefill"]
        self.phases["scoring"] += sum(prefill_seconds["scoring"].values())
        self.phases["allocation"] += sum(prefill_seconds["allocation"])
        if "question" in prefill_seconds:
            self.phases["question"] = self.phases.get("question", 0.0) + sum(prefill_seconds["question"])


def sweep_targets(cfg: DictConfig) -> list[Target]:
    """One run folder per (method, budget) of the sweep, each config checked as its single run's."""
    check_config(cfg)  # the sweep's own keys (budgets= with compression_ratios=, ...), before any work
    names = resolve_methods(cfg.methods)
    if cfg.get("compression_ratios") is not None or cfg.get("compression_ratio") is not None:
        ratios = cfg.get("compression_ratios")
        grid = [
            (n, None, r) for n, r in configurations(names, resolve_ratios(ratios or [cfg.compression_ratio]))
        ]
    else:
        budgets = resolve_budgets(cfg.budgets if cfg.get("budgets") is not None else [cfg.budget])
        grid = [(n, b, None) for n, b in configurations(names, budgets)]
    targets = []
    for name, budget, ratio in grid:
        single = single_config(cfg, name, budget, ratio)
        validate(single)  # max_decode_batch, seed, limit, shards, ... (the sweep's own values)
        targets.append(Target(single, build_method(single), run_dir_for(single)))
    return targets


def run_sweep(cfg: DictConfig) -> SweepSummary:
    """Run (or resume) every configuration of a sweep; each writes its single run's folder."""
    started = time.perf_counter()
    targets = sweep_targets(cfg)
    bench = build_benchmark(cfg)
    step = SweepStep(bench, cfg.get("max_decode_batch", 32))

    def timings(samples_seconds: float) -> dict[str, Any]:
        return {
            "sweep_configurations": len(targets),
            "sweep_phase_seconds": {k: round(v, 3) for k, v in step.phases.items()},
            "sweep_samples_seconds": round(samples_seconds, 3),
        }

    result = run_loop(cfg, bench, targets, f"{bench.name}/sweep of {len(targets)}", step, timings, started)
    return SweepSummary(
        result.runs,
        result.elapsed_seconds,
        result.samples,
        {k: round(v, 2) for k, v in step.phases.items()},
        samples_seconds=result.samples_seconds,
        device_memory=result.device_memory,
    )
