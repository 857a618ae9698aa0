"""LongBench v1 task table: which tasks exist, their language, category, prompt and decoding rules.

Sources (THUDM/LongBench @ 2e00731f): the task lists of ``LongBench/pred.py`` (plain and ``--e``),
the chat-template skip list in ``pred.py``, the categories of the README leaderboard and
``task.md``. Prompts and generation lengths are data, read from ``configs/bench/longbench_data``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from lava.errors import UserError

DATA_DIR = Path(__file__).resolve().parents[2] / "configs" / "bench" / "longbench_data"

# All 21 tasks in the order of LongBench/pred.py.
ALL_TASKS: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
)
ZH_TASKS: tuple[str, ...] = ("multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh")
# The 16 English + code tasks reported by KV-compression papers (SnapKV, PyramidKV, Ada-KV, LAVa).
PAPER_TASKS: tuple[str, ...] = tuple(t for t in ALL_TASKS if t not in ZH_TASKS)
# LongBench-E, the 13 tasks of ``pred.py --e`` (files ``<task>_e.jsonl``).
E_TASKS: tuple[str, ...] = (
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "gov_report",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
)
# pred.py: "chat models are better off without build prompts on these tasks".
NO_CHAT_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
# pred.py stops samsum at the newline token too (the model otherwise rambles on "\nDialogue").
NEWLINE_STOP_TASKS = frozenset({"samsum"})

# README leaderboard categories. The code category is shared by the English and Chinese tables.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Single-Doc QA": ("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"),
    "Multi-Doc QA": ("hotpotqa", "2wikimqa", "musique", "dureader"),
    "Summarization": ("gov_report", "qmsum", "multi_news", "vcsum"),
    "Few-shot Learning": ("trec", "triviaqa", "samsum", "lsht"),
    "Synthetic Tasks": ("passage_count", "passage_retrieval_en", "passage_retrieval_zh"),
    "Code Completion": ("lcc", "repobench-p"),
}
TASK_CATEGORY: dict[str, str] = {t: c for c, tasks in CATEGORIES.items() for t in tasks}
CODE_TASKS: tuple[str, ...] = CATEGORIES["Code Completion"]


def task_language(task: str) -> str:
    """``"zh"``, ``"code"`` or ``"en"``."""
    if task in ZH_TASKS:
        return "zh"
    return "code" if task in CODE_TASKS else "en"


def tasks_of_language(language: str) -> list[str]:
    """Tasks of the README's English or Chinese table (code tasks belong to both)."""
    return [t for t in ALL_TASKS if task_language(t) in (language, "code")]


@cache
def prompt_templates() -> dict[str, str]:
    """Task -> ``str.format`` template (LongBench/config/dataset2prompt.json, verbatim)."""
    return json.loads((DATA_DIR / "dataset2prompt.json").read_text(encoding="utf-8"))


@cache
def max_new_tokens() -> dict[str, int]:
    """Task -> generation length (LongBench/config/dataset2maxlen.json, verbatim)."""
    return json.loads((DATA_DIR / "dataset2maxlen.json").read_text(encoding="utf-8"))


def resolve_tasks(spec: Any, *, variant_e: bool = False) -> list[str]:
    """Turn ``bench.tasks`` into a list of task names, in a fixed order.

    Parameters
    ----------
    spec : str or sequence of str
        ``"default"`` (the 16 paper tasks; LongBench-E: its 13), ``"all"`` (21; LongBench-E: 13),
        ``"zh"`` (the 5 Chinese tasks), one task name, a comma-separated string or a list.
    variant_e : bool
        Resolve against LongBench-E's 13 tasks.

    Raises
    ------
    UserError
        Unknown names, or a task LongBench-E does not have.
    """
    available = E_TASKS if variant_e else ALL_TASKS
    bench = "longbench_e" if variant_e else "longbench"
    if spec is None or spec in ("default", "all", "en"):
        if variant_e or spec == "all":
            return list(available)
        return list(PAPER_TASKS)
    if spec == "zh":
        if variant_e:
            raise UserError(
                "longbench_e has no Chinese tasks; use bench.tasks=default or a list of its tasks"
            )
        return list(ZH_TASKS)
    names: Sequence[str] = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise UserError(
            f"unknown {bench} task(s) {unknown or names}; use default, all"
            f"{'' if variant_e else ', zh'} or a list from: {', '.join(available)}"
        )
    # Duplicates would give duplicate sample ids; keep the first occurrence.
    return list(dict.fromkeys(names))
