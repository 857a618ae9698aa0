"""The RULER benchmark (NVIDIA): 13 synthetic long-context tasks at chosen lengths (docs/ruler.md).

``bench=ruler`` generates every sample with the model's own tokenizer so that the full model input
(chat template and answer prefix included) plus the task's generation budget fits the target
length, caches the samples on disk, scores predictions with RULER's string-match rules and reports
a task x length table whose mean is the headline score.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.base import Benchmark, PromptContext, Sample
from eval.benchmarks.ruler.cache import (
    cache_file,
    generation_key,
    read_rows,
    tokenizer_fingerprint,
    write_rows,
)
from eval.benchmarks.ruler.fit import TokenCounter
from eval.benchmarks.ruler.qa_data import file_digest, load_qa, locate_qa_file
from eval.benchmarks.ruler.report import score_table, write_tables
from eval.benchmarks.ruler.tasks import OFFLINE_TASKS, TASKS, make_generator, resolve_tasks
from eval.metrics.ruler import SAMPLE_METRICS, postprocess_pred
from lava.errors import UserError


def sample_rng(seed: int, task: str, length: int, index: int | str) -> random.Random:
    """The generator of one sample: seeded by name, so sample i never depends on how many are made."""
    return random.Random(f"ruler:{seed}:{task}:{length}:{index}")


@dataclass
class Ruler(Benchmark):
    """RULER at one or more lengths.

    Parameters
    ----------
    tasks : str or list[str]
        ``offline`` (default, the 11 tasks that need no download), ``all`` (13, qa_1/qa_2 need
        SQuAD/HotpotQA), or a list of task names.
    lengths : list[int]
        Target lengths in tokens; each sample's input plus its generation budget fits inside.
    num_samples : int
        Samples per task and length (RULER: 500).
    chat : bool
        Wrap prompts with the model's chat template (answer prefix after it), as RULER's model
        templates do. The runner applies it only when the model config allows chat templates.
    qa_data_dir : str, optional
        Folder with ``squad.json``/``dev-v2.0.json`` and ``hotpotqa.json``/``hotpot_dev_distractor_v1.json``.
    download : bool
        Without ``qa_data_dir``, download the QA data into the cache when the network allows.
    cache : bool
        Reuse and store generated samples under ``<cache root>/ruler``.
    """

    name: str = "ruler"
    tasks: Any = "offline"
    lengths: list[int] = field(default_factory=lambda: [2048])
    num_samples: int = 10
    chat: bool = True
    qa_data_dir: str | None = None
    download: bool = True
    cache: bool = True
    min_new_tokens: int = 0  # RULER generates without a minimum
    version: int = 1  # part of the run identity: bump when prompts or scoring change

    unit: ClassVar[str] = "percent"  # RULER's per-sample scores are x100

    def __post_init__(self) -> None:
        self.task_names = resolve_tasks(self.tasks if isinstance(self.tasks, str) else list(self.tasks))
        try:
            self.lengths = [
                int(x) for x in ([self.lengths] if isinstance(self.lengths, int) else self.lengths)
            ]
        except (TypeError, ValueError) as exc:
            raise UserError(f"bench.lengths must be a list of token counts, got {self.lengths!r}") from exc
        if not self.lengths or min(self.lengths) < 256:
            raise UserError(f"bench.lengths must be token counts of at least 256, got {self.lengths}")
        if int(self.num_samples) < 1:
            raise UserError(f"bench.num_samples must be positive, got {self.num_samples}")
        self.num_samples = int(self.num_samples)

    def requested_prompt_tokens(self, ctx: PromptContext) -> int:
        """The longest target length: a sample's input plus its generation fits inside it."""
        return max(self.lengths)

    # ----------------------------------------------------------------------------------- samples
    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        # The runner wraps only when the sample, the model config and the tokenizer all allow it.
        chat = bool(self.chat and ctx.chat_template and getattr(ctx.tokenizer, "chat_template", None))
        counter = TokenCounter(ctx.tokenizer, chat)
        fingerprint = tokenizer_fingerprint(ctx.tokenizer)
        for length in self.lengths:
            for task in self.task_names:
                yield from self.task_samples(task, length, ctx.seed, counter, fingerprint)

    def task_samples(
        self, task: str, length: int, seed: int, counter: TokenCounter, fingerprint: str
    ) -> list[Sample]:
        """The first ``num_samples`` samples of ``task`` at ``length``, from the cache or generated."""
        qa, digest = None, None
        if TASKS[task].family == "qa":
            dataset = TASKS[task].args["dataset"]
            path = locate_qa_file(dataset, self.qa_data_dir, self.download)
            qa, digest = load_qa(dataset, str(path)), file_digest(path)
        key = generation_key(fingerprint, counter.chat, TASKS[task].args, digest)
        path = cache_file(task, length, seed, key)
        rows = read_rows(path) if self.cache else []
        if len(rows) < self.num_samples:
            generator = make_generator(task, length, seed, counter, qa)
            if rows:
                size = rows[0]["meta"]["fit_size"]
            else:
                size = generator.find_size(counter, lambda: sample_rng(seed, task, length, "probe"))
            for index in range(len(rows), self.num_samples):
                draft = generator.fit_sample(
                    size, counter, lambda index=index: sample_rng(seed, task, length, index), index
                )
                sample = Sample(
                    id=f"{task}_L{length}_{index}",
                    task=task,
                    prompt=draft.prompt,
                    references=draft.references,
                    max_new_tokens=generator.tokens_to_generate,
                    chat=self.chat,
                    answer_prefix=draft.answer_prefix,
                    stop_newline=False,
                    meta={"length": length, "index": index, "fit_size": size, **draft.meta},
                    question_start=draft.question_start,
                )
                rows.append(asdict(sample))
            if self.cache:
                write_rows(path, rows)
        return [Sample(**row) for row in rows[: self.num_samples]]

    # ----------------------------------------------------------------------------------- scoring
    def headline_metric(self) -> str:
        return "score"

    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """RULER's per-sample string match (x100) of the cleaned prediction."""
        metric = TASKS[record["task"]].metric
        value = SAMPLE_METRICS[metric](postprocess_pred(record["prediction"]), record["references"])
        return {"score": value, metric: value}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Task x length table (RULER's per-task scores), per-length means, and their overall mean."""
        return score_table(records, self.score)

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        """``ruler_scores.csv`` and ``ruler_scores.md``: tasks x lengths with averages."""
        if not records:
            return []
        return write_tables(score_table(records, self.score), Path(run_dir))


__all__ = ["OFFLINE_TASKS", "Ruler"]
