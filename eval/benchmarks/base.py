"""The benchmark interface: a benchmark is data (samples) plus a scoring function.

A benchmark yields :class:`Sample` objects whose ``prompt`` is final user text (already truncated
where the benchmark's definition says so). The runner wraps it with the model's chat template when
``chat`` is true, appends ``answer_prefix`` after that template, generates, and asks the benchmark
to score the prediction. Per-sample records are plain JSON, so scoring and aggregation can be
re-run from ``predictions.jsonl`` alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class Sample:
    """One prompt to answer.

    Attributes
    ----------
    id : str
        Unique and stable across reruns of the same configuration (resume key).
    task : str
        Sub-task name (e.g. ``"niah"``, ``"qasper"``, ``"niah_single_1"``).
    prompt : str
        User text. Wrapped with the chat template when ``chat`` is true.
    references : list
        Gold answers, JSON-serialisable.
    max_new_tokens : int
        Generation limit.
    chat : bool
        Apply the model's chat template (``add_generation_prompt=True``).
    answer_prefix : str
        Text appended after the (optional) chat template, e.g. RULER's answer cue.
    stop_newline : bool
        Stop generation at the first newline token (LongBench samsum, NIAH lineage).
    meta : dict
        JSON-serialisable extras the scorer or the tables need (depth, length, classes, ...).
    question_start : int or None
        Character offset into ``prompt`` where the question part begins (the question-agnostic
        setting, docs/question.md): ``prompt[:question_start]`` is the context part, compressed
        alone; ``prompt[question_start:]``, the chat template's closing text and ``answer_prefix``
        form the question part, prefilled after compression. ``len(prompt)`` means the question part
        is only what follows the user text; None means the sample has no question: the whole
        input is context and the two settings coincide. :func:`eval.sample_loop.build_prompt_parts`
        turns it into token ids.
    """

    id: str
    task: str
    prompt: str
    references: list[Any]
    max_new_tokens: int
    chat: bool = True
    answer_prefix: str = ""
    stop_newline: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    question_start: int | None = None


@dataclass
class PromptContext:
    """What a benchmark may know about the model when it builds prompts.

    Attributes
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer (for period-aligned insertion, length fitting, truncation).
    model_name : str
        Config name of the model (``model.name``).
    max_prompt_tokens : int
        Longest prompt (in tokens) the model config allows; benchmarks truncate to it.
    seed : int
        Run seed, for benchmarks that generate data.
    chat_template : bool
        False when the model config disables chat templates (base models); benchmarks may ignore.
    """

    tokenizer: Any
    model_name: str
    max_prompt_tokens: int
    seed: int = 42
    chat_template: bool = True

    def refuse_beyond_prompt_cap(self, tokens: int, asked: str) -> None:
        """One-line error when a benchmark that cannot truncate (``asked``: what in its config) needs
        ``tokens``-token prompts, beyond ``model.max_prompt_tokens``."""
        if tokens > self.max_prompt_tokens:
            from lava.errors import UserError

            raise UserError(
                f"{asked} need {tokens}-token prompts, beyond model.max_prompt_tokens={self.max_prompt_tokens}; "
                "use shorter lengths"
            )


class Benchmark(ABC):
    """Base class. Subclasses are dataclasses built by Hydra from ``configs/bench/*.yaml``.

    The contract with the run core and the results layer is declared here; a subclass overrides
    what differs. ``version`` and ``min_new_tokens`` are usually config fields of the subclass (they
    then enter the run identity with the rest of the bench config); ``unit``, ``lower_is_better``
    and ``teacher_forced`` are class constants (``ClassVar`` in a dataclass subclass, so Hydra
    cannot set them).
    """

    name: str = "benchmark"
    #: Part of the run identity (through the bench config): bump it when prompts or scoring change,
    #: so folders of the old definition are not resumed.
    version: int = 1
    #: Steps on which the stop tokens are suppressed (upstream's minimum generation length).
    min_new_tokens: int = 1
    #: Scored without a decoding loop: the run core calls :meth:`run_sample` (single run) or
    #: :meth:`run_prefilled` (sweep) instead of generating and calling :meth:`score`.
    teacher_forced: ClassVar[bool] = False
    #: Metric names for which a smaller value is better; every other metric is higher-is-better.
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: Unit of the headline ``score`` of ``scores.json``: ``"percent"`` (0-100) or ``"fraction"``
    #: (fractions of 1, or the metric's own unit, e.g. nats for a KL divergence).
    unit: ClassVar[str] = "fraction"

    @abstractmethod
    def samples(self, ctx: PromptContext) -> Iterable[Sample]:
        """Yield the samples of this benchmark in a deterministic order."""

    @abstractmethod
    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """Score one finished record.

        Parameters
        ----------
        record : dict
            A ``predictions.jsonl`` line: at least ``prediction``, ``references``, ``task``, ``meta``.

        Returns
        -------
        dict[str, float]
            Metric name -> value. The key named by :meth:`headline_metric` must be present.
        """

    def headline_metric(self) -> str:
        """Name of the per-sample metric averaged into the headline score."""
        return "score"

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Aggregate scored records into ``scores.json`` content.

        The default: mean of every metric over all samples and per task. The key ``"score"`` is the
        headline value shown in the summary.
        """
        return default_aggregate(records, self.headline_metric())

    def scores_json(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """What ``scores.json`` holds: :meth:`aggregate` plus the declared ``unit`` and
        ``lower_is_better`` metric names (so a folder says how to read its numbers without the class).

        The one place the declarations are written; subclasses override :meth:`aggregate`, not this.
        """
        out = self.aggregate(records)
        out.setdefault("unit", self.unit)
        out.setdefault("lower_is_better", sorted(self.lower_is_better))
        return out

    def run_sample(self, model: Any, cache: Any, prompt_ids: Sequence[int], sample: Sample) -> dict[str, Any]:
        """Teacher-forced benchmarks: prefill ``prompt_ids`` into ``cache``, measure, return the record.

        Parameters
        ----------
        model : transformers.PreTrainedModel
        cache : transformers.Cache
            The method's empty cache (a compressing cache, or a ``DynamicCache`` for the full cache).
        prompt_ids : sequence of int
            The tokenized prompt, shape (n,).
        sample : Sample

        Returns
        -------
        dict
            The finished ``predictions.jsonl`` record, ``scores`` included.
        """
        raise NotImplementedError(f"{type(self).__name__} is not teacher-forced (teacher_forced=False)")

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
        """Teacher-forced benchmarks in a sweep: one record per cache of one shared prefill.

        Parameters
        ----------
        full_cache : transformers.DynamicCache
            The prompt's full cache (the reference; the benchmark may consume it).
        caches : sequence
            Per configuration, its prefilled cache.
        prompt_ids : sequence of int
            The tokenized prompt, shape (n,).
        prefill_seconds : float
            Wall time of the shared prefill.
        max_batch : int
            Most caches processed in one batched forward.

        Returns
        -------
        list of dict
            One finished record per entry of ``caches``, in order.
        """
        raise NotImplementedError(f"{type(self).__name__} is not teacher-forced (teacher_forced=False)")

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        """Write extra files (plots, tables) into the run folder; return their paths."""
        return []

    def requested_prompt_tokens(self, ctx: PromptContext) -> int | None:
        """The longest prompt, in tokens, this benchmark's config asks for, computed from the config
        alone (no sample is generated), or None when the benchmark fits its prompts to the model itself.

        The runner refuses a run whose value exceeds ``model.max_context`` before any work, unless the
        user passes ``allow_beyond_context=true``.
        """
        return None


def default_aggregate(records: Sequence[dict[str, Any]], headline: str) -> dict[str, Any]:
    """Mean of each metric overall and per task; ``score`` is the mean of ``headline``."""
    if not records:
        return {"score": float("nan"), "num_samples": 0, "metrics": {}, "per_task": {}}
    metric_names = sorted({k for r in records for k in r["scores"]})

    def means(rs: Sequence[dict[str, Any]]) -> dict[str, float]:
        out = {}
        for m in metric_names:
            vals = [r["scores"][m] for r in rs if m in r["scores"]]
            if vals:
                out[m] = sum(vals) / len(vals)
        return out

    per_task: dict[str, dict[str, float]] = {}
    for task in sorted({r["task"] for r in records}):
        task_records = [r for r in records if r["task"] == task]
        per_task[task] = {"num_samples": len(task_records), **means(task_records)}
    overall = means(records)
    return {
        "score": overall.get(headline, float("nan")),
        "headline_metric": headline,
        "num_samples": len(records),
        "metrics": overall,
        "per_task": per_task,
    }


def middle_truncate(text: str, tokenizer: Any, max_tokens: int) -> str:
    """Keep the first and last ``max_tokens // 2`` tokens of ``text`` (LongBench / InfiniteBench rule).

    ``text`` is tokenized without special tokens, so ``max_tokens`` counts content tokens only, and
    the two halves are decoded separately with ``skip_special_tokens=True`` and joined, as
    LongBench's ``pred.py`` does. Text within the limit is returned unchanged.

    How this differs from upstream, for tokenizers that add a BOS token (LLaMA, Mistral; SmolLM2
    adds none, so there it is identical):

    - LongBench ``pred.py`` and InfiniteBench ``truncate_by_tokens`` (``eval_yarn_mistral.py``,
      ``eval_chatglm.py``, ``eval_yi_200k.py``) tokenize with the tokenizer's defaults, so the BOS
      is the first of the ``max_tokens`` and the front half keeps one content token less
      (``max_tokens // 2 - 1``). The BOS is then dropped by ``skip_special_tokens`` and added again
      when the prompt is encoded. Here the front half keeps ``max_tokens // 2`` content tokens:
      the limit applies to the text, whatever special tokens the prompt gets around it later.
    - InfiniteBench decodes the joined ids once; LongBench and this function decode each half on
      its own. With SentencePiece tokenizers a separately decoded tail loses the leading space of
      its first word piece, so the junction can lack one space compared with InfiniteBench's text.
      Byte-level BPE tokenizers decode to the same text either way.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    half = int(max_tokens / 2)
    return tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(
        ids[-half:], skip_special_tokens=True
    )


def text_after(template: str, marker: str, fields: Mapping[str, Any]) -> str:
    """The filled text of ``template`` that follows the first occurrence of ``marker``.

    ``marker`` is literal template text, usually the ``"{context}"`` field itself: with it the
    result is the question part's text as the template writes it. ``str.format`` fills a template
    piece by piece, so the result is a suffix of ``template.format(**fields)``.
    """
    return template[template.index(marker) + len(marker) :].format(**fields)


def question_offset(prompt: str, question: str) -> int:
    """Where ``question`` (the filled text after the context, :func:`text_after`) begins in ``prompt``.

    ``question`` ends the prompt as built, so the offset is ``len(prompt) - len(question)``. A
    middle-truncated prompt (:func:`middle_truncate`) keeps its last tokens, so the question
    normally survives whole; when the cut went into the question itself, or decoding the kept
    tokens changed a character of it, the question part is the longest end of ``question`` that
    still ends the prompt (possibly nothing: the offset is then ``len(prompt)``).
    """
    if prompt.endswith(question):
        return len(prompt) - len(question)
    kept = 0
    while kept < min(len(prompt), len(question)) and prompt[-1 - kept] == question[-1 - kept]:
        kept += 1
    return len(prompt) - kept
