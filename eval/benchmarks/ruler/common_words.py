"""RULER common words extraction (cwe): name the 10 words repeated most often in a numbered list.

Construction follows RULER ``scripts/data/synthetic/common_words_extraction.py`` (docs/ruler.md,
"How samples are made"): one few-shot example, then the main list; 10 common words repeated ``freq_cw`` times
and the other words ``freq_ucw`` times (3/1 and 6/1 below 4096 tokens), shuffled with a fixed-seed
``Random(seed)``. The few-shot block is written without any model template (the chat template
wraps the whole prompt once).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from eval.benchmarks.base import question_offset, text_after
from eval.benchmarks.ruler.fit import Draft, SizedGenerator, TokenCounter
from eval.benchmarks.ruler.templates import TEMPLATES
from eval.benchmarks.ruler.words import common_words_vocabulary
from lava.errors import UserError

SHORT_LENGTH = 4096  # below it RULER uses the short settings


def numbered(words: list[str]) -> str:
    """``"1. w1 2. w2 ..."`` (RULER's list format)."""
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


@dataclass
class CommonWordsGenerator(SizedGenerator):
    """The cwe task. Size unit: distinct words in the main list.

    Parameters
    ----------
    length : int
        Target length in tokens, generation included.
    seed : int
        Run seed (vocabulary shuffle and the fixed-seed list shuffle).
    freq_cw, freq_ucw, num_cw : int
        Repeats of common and uncommon words, number of common words (RULER: 30, 3, 10).
    num_fewshot : int
        Few-shot examples before the main list (RULER: 1).
    """

    length: int
    seed: int
    freq_cw: int = 30
    freq_ucw: int = 3
    num_cw: int = 10
    num_fewshot: int = 1

    def __post_init__(self) -> None:
        self.tokens_to_generate = TEMPLATES["common_words_extraction"].tokens_to_generate
        self.vocabulary = common_words_vocabulary(self.seed)

    def increment(self) -> int:
        return 10

    def probe_size(self) -> int:
        return min(4096, self.max_size())  # RULER estimates tokens per word on a 4096-word list

    def upper_bound(self, tokens_per_unit: float) -> int:
        return max(int(self.length // tokens_per_unit) * 2, self.increment() * 2)

    def max_size(self) -> int:
        return len(self.vocabulary)

    def find_size(self, count: TokenCounter, probe_rng: Callable[[], random.Random]) -> int:
        size = super().find_size(count, probe_rng)
        if size >= self.max_size():
            raise UserError(
                f"cwe at {self.length} tokens needs more than the {self.max_size()} distinct wonderwords words "
                "(RULER then falls back to its english_words.json, which is not available offline); "
                "drop cwe from bench.tasks for this length"
            )
        return size

    def example(self, num_words: int, common_repeats: int, uncommon_repeats: int, rng: random.Random):
        """One numbered list and its common words (RULER ``get_example``)."""
        if num_words > len(self.vocabulary):
            raise UserError(
                f"cwe needs {num_words} distinct words but only {len(self.vocabulary)} are available"
            )
        chosen = rng.sample(self.vocabulary, num_words)
        common, uncommon = chosen[: self.num_cw], chosen[self.num_cw :]
        word_list = common * common_repeats + uncommon * uncommon_repeats
        # Upstream quirk kept: a fresh fixed-seed RNG, so equal-length lists get the same permutation.
        random.Random(self.seed).shuffle(word_list)
        return numbered(word_list), common

    def repeats(self) -> tuple[tuple[int, int, int], tuple[int, int]]:
        """(few-shot size, common, uncommon repeats) and the main list's (common, uncommon) repeats."""
        if self.length < SHORT_LENGTH:
            return (20, 3, 1), (6, 1)
        return (40, 10, 3), (self.freq_cw, self.freq_ucw)

    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        task = TEMPLATES["common_words_extraction"]
        (shot_words, shot_cw, shot_ucw), (main_cw, main_ucw) = self.repeats()
        shots = []
        for _ in range(self.num_fewshot):
            context, answer = self.example(shot_words, shot_cw, shot_ucw, rng)
            filled = task.template.format(num_cw=self.num_cw, context=context, query="")
            shots.append(filled + task.answer_prefix + " " + numbered(answer))
        context, answer = self.example(size, main_cw, main_ucw, rng)
        main = task.template.format(num_cw=self.num_cw, context=context, query="")
        prompt = "\n".join(shots) + "\n" + main
        # Question part: "\nQuestion: What are the 10 most common words in the above list?" of the main
        # list (the few-shot block before it, answered, is context).
        question = text_after(task.template, "{context}", {"num_cw": self.num_cw, "query": ""})
        return Draft(
            prompt=prompt,
            answer_prefix=task.answer_prefix,
            references=answer,
            meta={"repeats": [main_cw, main_ucw]},
            question_start=question_offset(prompt, question),
        )
