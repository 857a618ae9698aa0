"""A run: ``samples -> prompt -> prefill (+ compression) -> decode -> predictions.jsonl -> scores.json``.

:func:`run` is what ``run.py`` calls: the single run of ``method=<m> budget=<B>``, or, with
``methods=`` set, a sweep (:func:`eval.sweep.run_sweep`). A run folder is identified by the model,
method, benchmark, budget and seed (:mod:`eval.run_folder`), so rerunning the same command resumes
it: finished samples are read back from ``predictions.jsonl`` and skipped. The loop itself is
:func:`eval.sample_loop.run_loop`, shared with the sweep.
"""

from __future__ import annotations

import time
from typing import Any

from omegaconf import DictConfig

from eval.benchmarks.base import Benchmark, Sample
from eval.checks import validate
from eval.generation import greedy_generate
from eval.method_configs import build_method, canonical
from eval.run_folder import RunSummary, make_record, run_dir_for
from eval.sample_loop import SampleLoop, Target, build_benchmark, run_loop
from eval.sweep import SweepSummary, run_sweep


def build_generation_cache(method: Any, model: Any, max_new_tokens: int) -> Any:
    """The cache one generation fills: the method's compressing cache, or a plain DynamicCache."""
    if method is not None and hasattr(method, "build_cache"):
        return method.build_cache(model, max_new_tokens=max_new_tokens)
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


class SingleStep:
    """The single run's work on one sample (:func:`eval.sample_loop.run_loop`'s ``per_sample``):
    generate with the method's cache and score, or, for a teacher-forced benchmark, its
    :meth:`~eval.benchmarks.base.Benchmark.run_sample`."""

    def __init__(self, bench: Benchmark) -> None:
        self.bench = bench

    def __call__(self, loop: SampleLoop, sample: Sample, pending: list[Target]) -> dict[str, str] | None:
        (target,) = pending
        prompt_ids, stops, input_ids = loop.inputs(sample)
        # Question-agnostic: the context part is prefilled (and compressed) alone, the question after
        # as decode-time entries (room reserved for them as for the generated tokens).
        context = loop.context_tokens(sample, prompt_ids)
        split = len(prompt_ids) if context is None else context
        reserve = sample.max_new_tokens + len(prompt_ids) - split
        method = target.method_for(split)  # a compression-ratio run: this sample's budget
        cache = build_generation_cache(method, loop.model, reserve)
        if self.bench.teacher_forced:  # scored in one prefill and two forwards, no decoding
            target.write(self.bench.run_sample(loop.model, cache, prompt_ids, sample))
            return None
        gen = greedy_generate(
            loop.model,
            input_ids[:, :split],
            max_new_tokens=sample.max_new_tokens,
            stop_ids=stops,
            cache=cache,
            min_new_tokens=loop.min_new,
            question_ids=input_ids[:, split:],
        )
        # A compressing cache times its scoring and allocation; a DynamicCache has neither.
        timings = getattr(cache, "timings", {})
        phases = {
            "prefill_seconds": gen.prefill_seconds,
            "scoring_seconds": timings.get("scoring", 0.0),
            "allocation_seconds": timings.get("allocation", 0.0),
            "decode_seconds": gen.decode_seconds,
        }
        if context is not None:
            phases["question_seconds"] = gen.question_seconds
        record = make_record(sample, self.bench, loop.tokenizer, prompt_ids, gen, cache, phases, context)
        if target.cfg.get("compression_ratio") is not None:
            record["budget"] = method.budget
        target.write(record)
        headline = self.bench.headline_metric()
        return {headline: f"{record['scores'][headline]:.2f}"}


def run_single(cfg: DictConfig) -> RunSummary:
    """Run (or resume) the single run of ``cfg`` and write its run folder."""
    started = time.perf_counter()
    validate(cfg)
    cfg = canonical(cfg)
    bench = build_benchmark(cfg)
    target = Target(cfg, build_method(cfg), run_dir_for(cfg))
    result = run_loop(
        cfg,
        bench,
        [target],
        f"{bench.name}/{cfg.method.name}",
        SingleStep(bench),
        lambda samples_seconds: {"samples_seconds": round(samples_seconds, 3)},
        started,
    )
    return result.runs[0]


def run(cfg: DictConfig) -> RunSummary | SweepSummary:
    """Run (or resume) one configuration (:func:`run_single`), or, with ``methods=`` set, a sweep
    (:func:`eval.sweep.run_sweep`); the summary's ``format()`` is what ``run.py`` prints."""
    if cfg.get("methods") is not None:
        return run_sweep(cfg)
    return run_single(cfg)
