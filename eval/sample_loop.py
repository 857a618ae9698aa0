"""The sample loop of a run, written once for the single run and the sweep (:func:`run_loop`).

The order is part of the contract: every config value has been checked before the loop starts (by
the caller, :func:`eval.checks.validate`); the tokenizer and the samples come first (prompt lengths
are checked against the model's window before any sample is generated, and a bad benchmark setting
stops there); then which samples each run folder still lacks; only then are the weights loaded and
the folders opened, so a refused run loads no model and writes nothing.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict
from tqdm.auto import tqdm

from eval import checks
from eval.benchmarks.base import Benchmark, PromptContext, Sample
from eval.device_memory import device_memory, mark_weights_loaded
from eval.method_configs import build_node
from eval.records import RecordWriter
from eval.run_folder import RunSummary, finish_run, open_run_folder, read_done
from lava.errors import UserError
from lava.models import ModelSpec, as_spec, load_model, load_tokenizer, newline_token_id, stop_token_ids
from lava.ratio import at_ratio


def build_benchmark(cfg: DictConfig) -> Benchmark:
    """The benchmark of ``cfg.bench`` (its constructor's checks run here, before any model loads)."""
    node = copy.deepcopy(cfg)  # the question setting is the run's, not a constructor argument
    with open_dict(node.bench):
        node.bench.pop("question", None)
    bench = build_node(node.bench, "bench")
    if not isinstance(bench, Benchmark):
        raise UserError(f"bench {cfg.bench.name!r} does not build a Benchmark; check its _target_")
    checks.check_benchmark(bench)
    return bench


def build_prompt_ids(sample: Sample, tokenizer: Any, spec: ModelSpec) -> list[int]:
    """Chat-wrap (when both the sample and the model allow it), append the answer prefix, tokenize."""
    if sample.chat and spec.chat_template and tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer.encode(text + sample.answer_prefix, add_special_tokens=False)
    return tokenizer.encode(sample.prompt + sample.answer_prefix, add_special_tokens=True)


def build_prompt_parts(sample: Sample, tokenizer: Any, spec: ModelSpec) -> tuple[list[int], list[int]]:
    """:func:`build_prompt_ids` split into the context part and the question part (docs/question.md).

    The whole input is tokenized as the aware setting does; the split is the token index where the
    question begins (``sample.question_start``, a character offset into ``sample.prompt``). The
    text before it (inside the chat-wrapped text when the chat template applies) is tokenized
    alone and the split is the longest common prefix of its ids with the whole input's: where a
    token spans the boundary (a BPE merge of the context's last characters with the question's
    first ones, or whitespace runs tokenized differently at the end of a text), that token goes to
    the question part, and the parts still re-assemble the input exactly.

    Parameters
    ----------
    sample : Sample
    tokenizer : transformers.PreTrainedTokenizerBase
    spec : ModelSpec

    Returns
    -------
    context_ids, question_ids : list of int
        Shapes (c,) and (n - c,), with ``context_ids + question_ids == build_prompt_ids(...)``, the
        (n,) ids of the aware setting. The question part holds the question text, the chat
        template's closing text and the answer prefix; it is empty when ``question_start`` is None
        (a sample without a question: both settings then compute the same thing).
    """
    ids = build_prompt_ids(sample, tokenizer, spec)
    start = sample.question_start
    if start is None:
        return ids, []
    if not 0 <= start <= len(sample.prompt):
        raise ValueError(
            f"sample {sample.id}: question_start={start} lies outside its {len(sample.prompt)}-character prompt"
        )
    if sample.chat and spec.chat_template and tokenizer.chat_template:  # build_prompt_ids' condition
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": sample.prompt}], add_generation_prompt=True, tokenize=False
        )
        head = tokenizer.encode(
            text[: _user_text_offset(text, sample.prompt, start)], add_special_tokens=False
        )
    else:
        head = tokenizer.encode(sample.prompt[:start], add_special_tokens=True)
    split = 0
    for a, b in zip(head, ids):  # tokens after a boundary-spanning one may differ too: stop at the first
        if a != b:
            break
        split += 1
    return ids[:split], ids[split:]


def _user_text_offset(text: str, prompt: str, start: int) -> int:
    """Offset into the chat-wrapped ``text`` of character ``start`` of the user text ``prompt``.

    The user turn is the last place the prompt appears (a system prompt comes before it). Some chat
    templates trim the user text; then its stripped form is searched and the offset moved by the
    whitespace removed in front.
    """
    at = text.rfind(prompt)
    if at >= 0:
        return at + start
    stripped = prompt.strip()
    at = text.rfind(stripped)
    if at < 0:
        raise ValueError("the chat template rewrites the user text: cannot locate the question in it")
    lead = len(prompt) - len(prompt.lstrip())
    return at + min(max(start - lead, 0), len(stripped))


def load_samples(cfg: DictConfig, bench: Benchmark, tokenizer: Any, spec: ModelSpec) -> list[Sample]:
    """The run's samples (this shard's, at most ``limit``), before any model weights are loaded."""
    ctx = PromptContext(
        tokenizer=tokenizer,
        model_name=spec.name,
        max_prompt_tokens=spec.max_prompt_tokens,
        seed=cfg.seed,
        chat_template=spec.chat_template,
    )
    checks.check_prompt_lengths(bench, ctx, spec.max_context, cfg)  # before generating any sample
    samples = list(bench.samples(ctx))
    if cfg.num_shards > 1:
        samples = samples[cfg.shard :: cfg.num_shards]
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise UserError(f"bench {bench.name} produced duplicate sample ids; its ids must be unique")
    return samples


class LengthWarning:
    """Warns once when a prompt plus its generation exceeds the model's context."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec, self.warned = spec, False

    def check(self, sample: Sample, prompt_ids: list[int]) -> None:
        if not self.warned and len(prompt_ids) + sample.max_new_tokens > self.spec.max_context:
            self.warned = True
            tqdm.write(
                f"[lava] warning: {sample.id} needs {len(prompt_ids)}+{sample.max_new_tokens} tokens, "
                f"beyond model.max_context={self.spec.max_context}"
            )


class SampleLoop:
    """Tokenizer, samples, model and per-sample inputs of one run (or one sweep).

    Parameters
    ----------
    cfg : DictConfig
        The run's config (``seed``, ``progress``, and what :func:`load_samples` reads).
    bench : Benchmark
    spec : ModelSpec
    """

    def __init__(self, cfg: DictConfig, bench: Benchmark, spec: ModelSpec) -> None:
        import torch

        torch.manual_seed(cfg.seed)
        self.cfg, self.bench, self.spec = cfg, bench, spec
        self.question = checks.question_setting(cfg)
        self.tokenizer = load_tokenizer(spec)
        self.samples: list[Sample] = load_samples(cfg, bench, self.tokenizer, spec)
        self.model: Any = None
        self.weights_bytes: int | None = None

    def load_model(self) -> Any:
        """Load the weights (after the caller has checked what is left to do); returns the model."""
        self.model, self.tokenizer = load_model(self.spec, self.tokenizer)
        self.eos_ids = stop_token_ids(self.tokenizer, self.spec, self.model)
        self.newline_id = newline_token_id(self.tokenizer)
        self.device = next(self.model.parameters()).device
        self.weights_bytes = mark_weights_loaded(self.device)
        self.min_new = int(self.bench.min_new_tokens)
        self.warn = LengthWarning(self.spec)
        return self.model

    def device_memory(self) -> dict[str, Any] | None:
        """The run's accelerator memory so far (:func:`eval.device_memory.device_memory`; None on a CPU)."""
        return device_memory(self.device, self.weights_bytes)

    def progress(self, todo: Sequence[Sample], desc: str) -> tqdm:
        """A bar over ``todo`` that starts at the samples already done (a resumed run shows them)."""
        return tqdm(
            todo,
            desc=desc,
            unit="sample",
            disable=not self.cfg.progress,
            initial=len(self.samples) - len(todo),
            total=len(self.samples),
        )

    def inputs(self, sample: Sample) -> tuple[list[int], list[int], Any]:
        """``(prompt_ids, stop_ids, input_ids (1, n) on the model's device)`` of one sample."""
        import torch

        prompt_ids = build_prompt_ids(sample, self.tokenizer, self.spec)
        self.warn.check(sample, prompt_ids)
        stops = self.eos_ids + ([self.newline_id] if sample.stop_newline else [])
        return prompt_ids, stops, torch.tensor([prompt_ids], device=self.device)

    def context_tokens(self, sample: Sample, prompt_ids: list[int]) -> int | None:
        """In the question-agnostic setting, how many of ``prompt_ids`` form the context part (the rest
        is the question part, :func:`build_prompt_parts`); None in the aware setting."""
        if self.question != "agnostic":
            return None
        context, question = build_prompt_parts(sample, self.tokenizer, self.spec)
        if context + question != prompt_ids:  # the split must re-assemble the aware prompt exactly
            raise RuntimeError(f"sample {sample.id}: context + question parts differ from the prompt")
        return len(context)


@dataclass
class Target:
    """One run folder a loop fills: a single run has one, a sweep one per (method, budget).

    Attributes
    ----------
    cfg : DictConfig
        The single-run config of the folder (what ``method=<m> budget=<B>`` composes).
    method : CompressionMethod or None
        None for the full cache.
    run_dir : Path
    done, new : list of dict
        Records read back from the folder, and those written by this loop.
    """

    cfg: DictConfig
    method: Any
    run_dir: Path
    done: list[dict[str, Any]] = field(default_factory=list)
    new: list[dict[str, Any]] = field(default_factory=list)
    done_ids: set[str] = field(default_factory=set)
    writer: RecordWriter | None = None

    @property
    def label(self) -> str:
        budget = self.cfg.get("budget")
        return self.cfg.method.name if budget is None else f"{self.cfg.method.name}-b{budget}"

    def method_for(self, compressed_tokens: int) -> Any:
        """The method one sample runs: :attr:`method`, or, for a compression-ratio run, a copy with
        the budget the ratio means for ``compressed_tokens`` entries (:func:`lava.ratio.at_ratio`)."""
        ratio = self.cfg.get("compression_ratio")
        if self.method is None or ratio is None:
            return self.method
        return at_ratio(self.method, compressed_tokens, float(ratio))

    def lacks(self, sample_id: str) -> bool:
        return sample_id not in self.done_ids

    def write(self, record: dict[str, Any]) -> None:
        """Append one finished record to the folder's ``predictions.jsonl`` (flushed at once)."""
        assert self.writer is not None, "records are written inside run_loop"
        self.writer.write(record)
        self.new.append(record)

    def records(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Every record of the folder (read back and new), in the order of ``ids``."""
        by_id = {r["id"]: r for r in self.done + self.new}
        return [by_id[i] for i in ids if i in by_id]


# ``per_sample(loop, sample, pending)``: write one record per target of ``pending`` (those lacking the
# sample) with Target.write; may return a progress-bar postfix.
PerSample = Callable[[SampleLoop, Sample, list[Target]], "dict[str, str] | None"]


@dataclass
class LoopResult:
    """What :func:`run_loop` returns: one summary per target and the loop's own figures."""

    runs: list[RunSummary]
    samples: int
    elapsed_seconds: float  # since ``started`` (the caller's checks and builds included)
    samples_seconds: float  # the sample loop alone (model loaded, folders open): what the new samples cost
    device_memory: dict[str, Any] | None  # on CUDA (eval.device_memory): weights, peak, device


def run_loop(
    cfg: DictConfig,
    bench: Benchmark,
    targets: list[Target],
    desc: str,
    per_sample: PerSample,
    timings: Callable[[float], dict[str, Any]],
    started: float,
) -> LoopResult:
    """Fill (or resume) ``targets``' run folders: the skeleton of a single run and of a sweep.

    Reads each folder's finished records; loads the tokenizer and the samples (prompt lengths checked);
    keeps the samples some folder lacks; loads the model; opens the folders and their writers; runs
    ``per_sample`` on each kept sample under a progress bar; finishes every folder
    (:func:`eval.run_folder.finish_run`).

    Parameters
    ----------
    cfg : DictConfig
        The run's config, already checked (:func:`eval.checks.validate`).
    targets : list of Target
        The folders; ``done`` is filled here.
    desc : str
        The progress bar's label.
    per_sample : callable
        See :data:`PerSample`.
    timings : callable
        ``timings(samples_seconds)``: the extra timings of every folder's ``run_meta.json``.
    started : float
        ``time.perf_counter()`` when the caller began (its checks and builds count in ``elapsed``).
    """
    for target in targets:
        target.done = read_done(target.run_dir / "predictions.jsonl")
        target.done_ids = {r["id"] for r in target.done}
    loop = SampleLoop(cfg, bench, as_spec(cfg.model))
    todo = [s for s in loop.samples if any(t.lacks(s.id) for t in targets)]
    loop.load_model()
    for target in targets:
        open_run_folder(target.run_dir, target.cfg, target.method)
    bar = loop.progress(todo, desc)
    t_samples = time.perf_counter()
    with ExitStack() as stack:
        stack.callback(bar.close)
        for target in targets:
            target.writer = stack.enter_context(RecordWriter(target.run_dir / "predictions.jsonl"))
        for sample in bar:
            postfix = per_sample(loop, sample, [t for t in targets if t.lacks(sample.id)])
            if postfix:
                bar.set_postfix(postfix)
    end = time.perf_counter()
    samples_seconds = end - t_samples
    memory = loop.device_memory()  # the whole loop's, recorded in every folder's run_meta.json
    ids = [s.id for s in loop.samples]
    extra = timings(samples_seconds)
    runs = [
        finish_run(
            t.run_dir, t.cfg, bench, t.records(ids), t.new, end - started, str(loop.device), extra, memory
        )
        for t in targets
    ]
    return LoopResult(runs, len(loop.samples), end - started, samples_seconds, memory)
