"""The 13 RULER tasks and how to build each one's generator.

Task names and parameters are RULER's ``scripts/synthetic.yaml`` (NVIDIA/RULER @ c3f5e3b4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from eval.benchmarks.ruler.common_words import CommonWordsGenerator
from eval.benchmarks.ruler.fit import SizedGenerator, TokenCounter
from eval.benchmarks.ruler.freq_words import FreqWordsGenerator
from eval.benchmarks.ruler.niah import NiahGenerator
from eval.benchmarks.ruler.qa import QAGenerator
from eval.benchmarks.ruler.qa_data import QAPair
from eval.benchmarks.ruler.variable_tracking import VariableTrackingGenerator
from lava.errors import UserError


@dataclass(frozen=True)
class TaskSpec:
    """A row of RULER's ``synthetic.yaml``: the generator family, its arguments and its metric."""

    family: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        # RULER scripts/eval/synthetic/constants.py: only qa uses string_match_part.
        return "string_match_part" if self.family == "qa" else "string_match_all"


def _niah(haystack: str, key: str, value: str, k: int = 1, v: int = 1, q: int = 1) -> TaskSpec:
    return TaskSpec(
        "niah",
        {
            "type_haystack": haystack,
            "type_needle_k": key,
            "type_needle_v": value,
            "num_needle_k": k,
            "num_needle_v": v,
            "num_needle_q": q,
        },
    )


# RULER scripts/synthetic.yaml.
TASKS: dict[str, TaskSpec] = {
    "niah_single_1": _niah("noise", "words", "numbers"),
    "niah_single_2": _niah("essay", "words", "numbers"),
    "niah_single_3": _niah("essay", "words", "uuids"),
    "niah_multikey_1": _niah("essay", "words", "numbers", k=4),
    "niah_multikey_2": _niah("needle", "words", "numbers"),
    "niah_multikey_3": _niah("needle", "uuids", "uuids"),
    "niah_multivalue": _niah("essay", "words", "numbers", v=4),
    "niah_multiquery": _niah("essay", "words", "numbers", q=4),
    "vt": TaskSpec("variable_tracking", {"num_chains": 1, "num_hops": 4}),
    "cwe": TaskSpec("common_words_extraction", {"freq_cw": 30, "freq_ucw": 3, "num_cw": 10}),
    "fwe": TaskSpec("freq_words_extraction", {"alpha": 2.0}),
    "qa_1": TaskSpec("qa", {"dataset": "squad"}),
    "qa_2": TaskSpec("qa", {"dataset": "hotpotqa"}),
}

ALL_TASKS: list[str] = list(TASKS)
# The tasks that need no download (everything but the QA pair).
OFFLINE_TASKS: list[str] = [t for t in ALL_TASKS if TASKS[t].family != "qa"]


def resolve_tasks(tasks: str | Sequence[str]) -> list[str]:
    """Task names from ``bench.tasks``: ``all`` (13), ``offline`` (11), one name, or a list of names."""
    if isinstance(tasks, str):
        if tasks == "all":
            return list(ALL_TASKS)
        if tasks in ("offline", "default"):
            return list(OFFLINE_TASKS)
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    names = [str(t) for t in tasks]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown RULER task(s) {unknown}; use `all`, `offline` or a list from {ALL_TASKS}")
    if len(set(names)) != len(names):
        raise UserError(f"bench.tasks lists a task twice: {names}")
    return names


def make_generator(
    task: str,
    length: int,
    seed: int,
    counter: TokenCounter,
    qa: tuple[list[QAPair], list[str]] | None = None,
) -> SizedGenerator:
    """The generator of ``task`` at ``length`` tokens (QA tasks need their loaded pairs and documents)."""
    spec = TASKS[task]
    if spec.family == "niah":
        return NiahGenerator(length, seed, **spec.args)
    if spec.family == "variable_tracking":
        return VariableTrackingGenerator(length, seed, counter, **spec.args)
    if spec.family == "common_words_extraction":
        return CommonWordsGenerator(length, seed, **spec.args)
    if spec.family == "freq_words_extraction":
        return FreqWordsGenerator(length, seed, **spec.args)
    if qa is None:
        raise ValueError(f"{task} needs its QA data")
    pairs, documents = qa
    return QAGenerator(length, seed, pairs=pairs, documents=documents)
