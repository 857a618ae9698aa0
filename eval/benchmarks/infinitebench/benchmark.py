"""InfiniteBench (OpenBMB): 12 long-context tasks from released data or, for six, generated offline.

See ``docs/infinitebench.md`` (tasks, prompts, scores, offline data). Prompts are the open-model
(yarn_mistral) templates; the whole filled prompt is middle-truncated to ``max_length`` tokens as
upstream does (128k officially, the model's prompt window by default here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.base import Benchmark, PromptContext, Sample, middle_truncate, question_offset
from eval.benchmarks.infinitebench.loaders import HUB_FORMATS, HUB_REPO, load_hub, load_local
from eval.benchmarks.infinitebench.prompts import create_prompt, get_answer, question_text, split_answer_cue
from eval.benchmarks.infinitebench.report import summarise, write_tables
from eval.benchmarks.infinitebench.synthetic import generate
from eval.benchmarks.infinitebench.synthetic.cache import (
    CACHE_MIN_TOKENS,
    cache_path,
    cached_examples,
    tokenizer_fingerprint,
)
from eval.benchmarks.infinitebench.tasks import (
    ALL_TASKS,
    MAX_NEW_TOKENS,
    PAPER_TASKS,
    RELEASED_SIZES,
    SYNTHETIC_TASKS,
    Example,
)
from eval.metrics.infinitebench import score_one
from lava.errors import UserError

SOURCES = ("hub", "local", "synthetic")
# Length of every answer list in the released math_calc.jsonl (15000 operands).
MATH_CALC_RELEASED_VALUES = 14999


@dataclass
class InfiniteBench(Benchmark):
    """InfiniteBench with the yarn_mistral prompts and the official scoring rules.

    Parameters
    ----------
    tasks : list[str], optional
        Tasks to run. Default: the eight the LAVa paper reports, or the six generable ones when
        ``source`` is ``synthetic``.
    source : {"hub", "local", "synthetic"}
        Released data from the hub (or its local cache), from ``data_dir``, or generated here.
    data_dir : str, optional
        Folder with ``<task>.jsonl`` files (``source=local``).
    num_samples : int, optional
        First ``num_samples`` rows per task (released data), or how many to generate (synthetic;
        default the released count, e.g. 590 for passkey).
    max_length : int, optional
        Middle-truncation limit of the whole prompt in tokens, and the length synthetic prompts are
        fitted to. Upstream: 131072. Default: the model's ``max_prompt_tokens``.
    chat : bool
        Wrap the prompt in the model's chat template and move the answer cue after it. Upstream
        feeds raw text; with ``false`` (or a model without chat template) the text is byte-identical.
    hub_repo : str
        Hub dataset id.
    hub_format : {"jsonl", "datasets"}
        Download ``<task>.jsonl`` alone, or load the split with ``datasets`` and an explicit schema.
    max_new_tokens : dict[str, int], optional
        Per-task overrides of upstream's generation limits.
    """

    name: str = "infinitebench"
    tasks: list[str] | None = None
    source: str = "hub"
    data_dir: str | None = None
    num_samples: int | None = None
    max_length: int | None = None
    chat: bool = True
    hub_repo: str = HUB_REPO
    hub_format: str = "jsonl"
    max_new_tokens: dict[str, int] | None = None
    min_new_tokens: int = 0  # InfiniteBench generates without a minimum
    version: int = 1  # part of the run identity: bump when prompts or scoring change

    unit: ClassVar[str] = "percent"  # task scores x100, upstream's unit

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise UserError(f"bench.source={self.source} is invalid; use one of {list(SOURCES)}")
        if self.hub_format not in HUB_FORMATS:
            raise UserError(f"bench.hub_format={self.hub_format} is invalid; use one of {list(HUB_FORMATS)}")
        if self.tasks is None:
            self.tasks = list(SYNTHETIC_TASKS if self.source == "synthetic" else PAPER_TASKS)
        elif isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        self.tasks = list(self.tasks)
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown or not self.tasks:
            raise UserError(f"bench.tasks has unknown or no tasks {unknown}; valid: {list(ALL_TASKS)}")
        if self.source == "synthetic":
            real = [t for t in self.tasks if t not in SYNTHETIC_TASKS]
            if real:
                raise UserError(
                    f"bench.source=synthetic cannot generate {real}; generable tasks: {list(SYNTHETIC_TASKS)} "
                    f"(use bench.source=hub or local for the others)"
                )
        for key, value in (("num_samples", self.num_samples), ("max_length", self.max_length)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"bench.{key}={value} is invalid; give a positive integer or null")
        overrides = dict(self.max_new_tokens or {})
        bad = [t for t, v in overrides.items() if t not in ALL_TASKS or not isinstance(v, int) or v < 1]
        if bad:
            raise UserError(
                f"bench.max_new_tokens has invalid entries for {bad}; map task names to positive ints"
            )
        self.max_new_tokens = overrides

    # ------------------------------------------------------------------ samples
    def prompt_length(self, ctx: PromptContext) -> int:
        """Token limit of the whole prompt: ``max_length``, else the model's prompt window."""
        return int(self.max_length or ctx.max_prompt_tokens)

    def requested_prompt_tokens(self, ctx: PromptContext) -> int:
        """Prompts are middle-truncated (or generated) to :meth:`prompt_length` tokens."""
        return self.prompt_length(ctx)

    def examples(self, task: str, ctx: PromptContext) -> Iterable[Example]:
        """Rows of ``task`` from the configured source, in a fixed order."""
        if self.source == "local":
            return load_local(task, self.data_dir, self.num_samples)
        if self.source == "hub":
            return load_hub(task, self.hub_repo, self.hub_format, self.num_samples)
        tokenizer = ctx.tokenizer

        def measure(example: Example) -> int:
            return len(tokenizer.encode(create_prompt(example, task), add_special_tokens=False))

        count, budget = self.num_samples or RELEASED_SIZES[task], self.prompt_length(ctx)

        def build() -> Iterable[Example]:
            return generate(task, count, budget, measure, ctx.seed)

        if budget < CACHE_MIN_TOKENS:
            return build()
        path = cache_path(task, count, budget, ctx.seed, tokenizer_fingerprint(tokenizer))
        return cached_examples(path, build)

    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        limit = self.prompt_length(ctx)
        for task in self.tasks:
            for example in self.examples(task, ctx):
                yield self.make_sample(task, example, ctx, limit)

    def uses_chat(self, ctx: PromptContext) -> bool:
        """Same condition as the runner's: the bench, the model config and the tokenizer all allow it."""
        return bool(self.chat and ctx.chat_template and getattr(ctx.tokenizer, "chat_template", None))

    def make_sample(self, task: str, example: Example, ctx: PromptContext, limit: int) -> Sample:
        """Fill the template, middle-truncate the whole prompt, split off the cue in chat mode."""
        full_text = create_prompt(example, task)
        # middle_truncate tokenizes once and returns the text unchanged when it fits (a second
        # tokenization just for the length would cost about a second per 128k prompt).
        text = middle_truncate(full_text, ctx.tokenizer, limit)
        truncated = text != full_text
        chat = self.uses_chat(ctx)
        start = question_offset(text, question_text(example, task))
        prompt, cue = split_answer_cue(task, text) if chat else (text, "")
        # In chat mode the cue leaves the user text (it becomes the answer prefix, after the chat
        # template): a question that was only the cue leaves nothing of itself in the prompt.
        start = min(start, len(prompt))
        references = get_answer(example, task)
        return Sample(
            id=f"{task}-{example.id}",
            task=task,
            prompt=prompt,
            references=references,
            max_new_tokens=self.generation_limit(task, references),
            chat=chat,
            answer_prefix=cue,
            stop_newline=False,
            meta={
                "source": self.source,
                "example_id": example.id,
                "truncated": truncated,
                **example.meta,
            },
            question_start=start,
        )

    def generation_limit(self, task: str, references: list[Any]) -> int:
        """Upstream's max_new_tokens, or the user's override.

        math_calc's 30000 is sized for the released expressions (14999 values: two tokens per
        value). Shorter synthetic expressions keep that allowance per value, so the limit equals
        upstream's at 128k and shrinks with the expression instead of dwarfing the prompt.
        """
        if task in self.max_new_tokens:
            return int(self.max_new_tokens[task])
        limit = MAX_NEW_TOKENS[task]
        if task == "math_calc":
            values = references[0] if references and isinstance(references[0], list) else references
            limit = min(limit, math.ceil(limit * len(values) / MATH_CALC_RELEASED_VALUES))
        return limit

    # ------------------------------------------------------------------ scores
    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """``{"score": s}``, the official per-sample score in [0, 1]."""
        return {"score": score_one(record["task"], record["prediction"], record["references"])}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per-task scores in percent; ``score`` is their unweighted mean."""
        out = summarise(records, self.headline_metric())
        out["source"] = self.source
        return out

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        return write_tables(run_dir, records, self.headline_metric())
