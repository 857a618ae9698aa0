"""LongBench v1 (THUDM) and LongBench-E: 21 real-data long-context tasks, scored as upstream does.

Per record (``LongBench/pred.py``): fill the task's template with the record, middle-truncate the
prompt to the model's prompt budget in tokens, then (runner side) apply the chat template unless the
task is one of the six upstream leaves raw, and decode greedily for the task's ``max_new_tokens``
(samsum also stops at a newline). Scoring and tables follow ``LongBench/eval.py``; see
:mod:`eval.metrics.longbench` and :mod:`eval.benchmarks.longbench_scores`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.base import (
    Benchmark,
    PromptContext,
    Sample,
    middle_truncate,
    question_offset,
    text_after,
)
from eval.benchmarks.longbench_loader import HUB_REPO, cached_data_dir, local_data_dir, read_task, task_file
from eval.benchmarks.longbench_scores import (
    aggregate_longbench,
    aggregate_longbench_e,
    write_longbench_e_tables,
    write_longbench_tables,
)
from eval.benchmarks.longbench_tasks import (
    NEWLINE_STOP_TASKS,
    NO_CHAT_TASKS,
    max_new_tokens,
    prompt_templates,
    resolve_tasks,
)
from eval.metrics.longbench import score_prediction
from lava.errors import UserError


@dataclass
class LongBench(Benchmark):
    """LongBench v1.

    Attributes
    ----------
    name : str
        Config name (``longbench``).
    tasks : str or list of str
        ``default`` (16 English + code tasks of the KV-compression papers), ``all`` (21), ``zh``
        (5 Chinese), or a list of task names.
    data_dir : str, optional
        Unpacked ``data.zip`` (the folder with ``<task>.jsonl``). None: download from the hub once.
    max_prompt_tokens : int, optional
        Middle-truncation limit in tokens; None takes the model config's ``max_prompt_tokens``.
    samples_per_task : int, optional
        Keep the first N records of each task (smoke runs); None keeps all.
    cache_dir : str, optional
        Where the downloaded data.zip is unzipped; None: ``$LAVA_BENCH_CACHE/data/longbench``.
    repo_id : str
        Hub dataset holding ``data.zip``.
    """

    name: str = "longbench"
    tasks: Any = "default"
    data_dir: str | None = None
    max_prompt_tokens: int | None = None
    samples_per_task: int | None = None
    cache_dir: str | None = None
    repo_id: str = HUB_REPO
    min_new_tokens: int = 1  # stop tokens suppressed on the first step (LongBench pred.py min_length)
    version: int = 1  # part of the run identity: bump when prompts or scoring change

    unit: ClassVar[str] = "percent"  # task scores on LongBench's 0-100 scale

    variant_e = False  # class constant, not a config field

    def __post_init__(self) -> None:
        # Resolve now so a bad task name fails before the model is loaded.
        self.task_list = resolve_tasks(self.tasks, variant_e=self.variant_e)
        for option in ("max_prompt_tokens", "samples_per_task"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise UserError(f"bench.{option}={value} is invalid; give a positive integer or null")

    def _folder(self) -> Path:
        if self.data_dir:
            return local_data_dir(self.data_dir)
        return cached_data_dir(self.cache_dir, self.repo_id)

    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        """Yield every selected record of every task, tasks in the configured order."""
        folder = self._folder()
        limit = self.max_prompt_tokens or ctx.max_prompt_tokens
        # Check every task file first: a missing one should fail before hours of generation.
        for task in self.task_list:
            task_file(folder, task, variant_e=self.variant_e)
        for task in self.task_list:
            records = read_task(folder, task, variant_e=self.variant_e)
            if self.samples_per_task is not None:
                records = records[: self.samples_per_task]
            yield from self._task_samples(task, records, ctx.tokenizer, limit)

    def _task_samples(
        self, task: str, records: Sequence[dict[str, Any]], tokenizer: Any, limit: int
    ) -> Iterator[Sample]:
        template = prompt_templates()[task]
        prefix = f"{task}_e" if self.variant_e else task
        seen: dict[str, int] = {}
        for index, record in enumerate(records):
            prompt = build_prompt(template, record)
            truncated = middle_truncate(prompt, tokenizer, limit)
            # Question-agnostic split (docs/longbench.md): the question part is all the template
            # writes after {context}. Where a template states its instruction before the context
            # and again after it (narrativeqa, qasper, hotpotqa, ...: LongBench
            # config/dataset2prompt.json), only the copy after the context is in the question part.
            question = text_after(template, "{context}", record)
            base_id = f"{prefix}/{record.get('_id') or index}"
            # Ids must be unique; repeated upstream _id values get a stable suffix.
            seen[base_id] = seen.get(base_id, 0) + 1
            sample_id = base_id if seen[base_id] == 1 else f"{base_id}#{seen[base_id]}"
            yield Sample(
                id=sample_id,
                task=task,
                prompt=truncated,
                references=list(record["answers"]),
                max_new_tokens=max_new_tokens()[task],
                chat=task not in NO_CHAT_TASKS,
                stop_newline=task in NEWLINE_STOP_TASKS,
                meta={
                    "length": record.get("length"),
                    "all_classes": record.get("all_classes"),
                    "language": record.get("language"),
                    "truncated": truncated != prompt,
                },
                question_start=question_offset(truncated, question),
            )

    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """``{"score": s}`` with ``s`` in [0, 1], LongBench's per-sample score."""
        meta = record.get("meta") or {}
        value = score_prediction(
            record["task"], record["prediction"], record["references"], meta.get("all_classes")
        )
        return {"score": float(value)}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per-task scores (0-100), category and language averages, the 16-task paper average."""
        return aggregate_longbench(records)

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        """Per-task and average tables, CSV and Markdown."""
        return write_longbench_tables(Path(run_dir), aggregate_longbench(records))


@dataclass
class LongBenchE(LongBench):
    """LongBench-E: 13 tasks with comparable sample counts in the 0-4k, 4-8k and 8k+ length buckets."""

    name: str = "longbench_e"
    variant_e = True

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Per-task and per-bucket scores (buckets by the record's ``length`` field)."""
        return aggregate_longbench_e(records)

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        """Task x bucket tables, CSV and Markdown."""
        return write_longbench_e_tables(Path(run_dir), aggregate_longbench_e(records))


def build_prompt(template: str, record: dict[str, Any]) -> str:
    """``template.format(**record)``, as pred.py; a record without a needed field is a data error."""
    try:
        return template.format(**record)
    except KeyError as exc:
        raise UserError(
            f"LongBench record {record.get('_id', '?')} has no field {exc}; is this the official data?"
        ) from None
