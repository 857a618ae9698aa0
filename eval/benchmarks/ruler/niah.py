"""RULER needle-in-a-haystack family (niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery).

Construction follows RULER ``scripts/data/synthetic/niah.py`` (docs/ruler.md, "How samples are made"): keys and
values from the configured generators, needles shuffled with a fixed-seed ``Random(seed)``, placed
into a noise, needle or essay haystack, and a query over a random subset of the keys.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from eval.benchmarks.base import question_offset, text_after
from eval.benchmarks.ruler.essay import essay_sentences
from eval.benchmarks.ruler.fit import Draft, SizedGenerator
from eval.benchmarks.ruler.templates import NEEDLE, NOISE, SINGULAR_REPLACEMENTS, TEMPLATES
from eval.benchmarks.ruler.words import VALUE_TYPES, random_value
from lava.errors import UserError

HAYSTACK_TYPES = ("noise", "essay", "needle")

# RULER niah.py: 40 insertion depths (percent), rounded evenly spaced points on 0..100.
DEPTHS: list[int] = [int(d) for d in np.round(np.linspace(0, 100, num=40, endpoint=True)).astype(int)]


def query_text(keys: list[str]) -> str:
    """``"k1, k2, and k3"`` for several keys, the key itself for one (RULER niah.py)."""
    if len(keys) == 1:
        return keys[0]
    return ", ".join(keys[:-1]) + ", and " + keys[-1]


def insert_into_sentences(sentences: tuple[str, ...], needles: list[str], depths: list[int]) -> str:
    """Put needle ``i`` after the first ``int(len(sentences) * depths[i] / 100)`` sentences.

    ``depths`` must be sorted. Sentence runs and needles are joined with single spaces; empty runs
    are kept, as upstream does, so a needle at depth 0 is preceded by a space.
    """
    cuts = [0] + [int(len(sentences) * (d / 100)) for d in depths] + [len(sentences)]
    pieces: list[str] = []
    for i in range(1, len(cuts)):
        pieces.append(" ".join(sentences[cuts[i - 1] : cuts[i]]))
        if i - 1 < len(needles):
            pieces.append(needles[i - 1])
    return " ".join(pieces)


def insert_into_lines(lines: list[str], needles: list[str], rng: random.Random) -> tuple[str, list[float]]:
    """Insert needles at distinct random line indices (descending, as upstream) and join with newlines.

    Returns the context and, per needle in input order, its depth in percent of the filler lines.
    """
    num_lines = len(lines)
    indexes = sorted(rng.sample(range(num_lines), len(needles)), reverse=True)
    lines = list(lines)
    for index, needle in zip(indexes, needles, strict=True):
        lines.insert(index, needle)
    return "\n".join(lines), [100.0 * i / num_lines for i in indexes]


@dataclass
class NiahGenerator(SizedGenerator):
    """One NIAH task configuration (a row of RULER's ``synthetic.yaml``).

    Parameters
    ----------
    length : int
        Target length in tokens, generation included.
    seed : int
        Run seed (fixed-seed shuffles use it).
    type_haystack : str
        ``noise``, ``essay`` or ``needle``.
    type_needle_k, type_needle_v : str
        ``numbers``, ``words`` or ``uuids``.
    num_needle_k, num_needle_v, num_needle_q : int
        Keys, values per key, queried keys (keys are raised to at least the queries, as upstream).
    """

    length: int
    seed: int
    type_haystack: str = "essay"
    type_needle_k: str = "words"
    type_needle_v: str = "numbers"
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1

    def __post_init__(self) -> None:
        if self.type_haystack not in HAYSTACK_TYPES:
            raise UserError(
                f"unknown RULER haystack {self.type_haystack!r}; use one of {list(HAYSTACK_TYPES)}"
            )
        for kind in (self.type_needle_k, self.type_needle_v):
            if kind not in VALUE_TYPES:
                raise UserError(f"unknown RULER needle type {kind!r}; use one of {list(VALUE_TYPES)}")
        self.num_needle_k = max(self.num_needle_k, self.num_needle_q)
        self.tokens_to_generate = TEMPLATES["niah"].tokens_to_generate

    def increment(self) -> int:
        if self.type_haystack == "essay":
            return 500
        return 5 if self.length < 4096 else 25

    def _templates(self) -> tuple[str, str, str]:
        """Task template, answer prefix and the needle type word, singular when one value is asked."""
        template, prefix = TEMPLATES["niah"].template, TEMPLATES["niah"].answer_prefix
        type_v = self.type_needle_v
        if self.num_needle_q * self.num_needle_v == 1:
            for old, new in SINGULAR_REPLACEMENTS:
                template, prefix = template.replace(old, new), prefix.replace(old, new)
            type_v = type_v[:-1]
        return template, prefix, type_v

    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        keys: list[str] = []
        values: list[list[str]] = []
        needles: list[str] = []
        for _ in range(self.num_needle_k):
            keys.append(random_value(self.type_needle_k, rng))
            values.append([])
            for _ in range(self.num_needle_v):
                values[-1].append(random_value(self.type_needle_v, rng))
                needles.append(
                    NEEDLE.format(type_needle_v=self.type_needle_v, key=keys[-1], value=values[-1][-1])
                )
        # Upstream quirk kept: a fresh fixed-seed RNG, so every sample gets the same permutation.
        random.Random(self.seed).shuffle(needles)

        if self.type_haystack == "essay":
            depths = sorted(rng.sample(DEPTHS, len(needles)))
            context = insert_into_sentences(essay_sentences(size), needles, depths)
            needle_depths = [float(d) for d in depths]
        else:
            if self.type_haystack == "noise":
                lines = [NOISE] * size
            else:
                lines = [
                    NEEDLE.format(
                        type_needle_v=self.type_needle_v,
                        key=random_value(self.type_needle_k, rng),
                        value=random_value(self.type_needle_v, rng),
                    )
                    for _ in range(size)
                ]
            context, needle_depths = insert_into_lines(lines, needles, rng)

        queried = rng.sample(range(self.num_needle_k), self.num_needle_q)
        answers = [value for i in queried for value in values[i]]
        query = query_text([keys[i] for i in queried])
        template, prefix, type_v = self._templates()
        prompt = template.format(type_needle_v=type_v, context=context, query=query)
        # Question part: "\nWhat are all the special magic ... for <query> mentioned in the provided text?"
        question = text_after(template, "{context}", {"type_needle_v": type_v, "query": query})
        return Draft(
            prompt=prompt,
            answer_prefix=prefix.format(type_needle_v=type_v, query=query),
            references=answers,
            meta={"needles": needles, "depths": needle_depths},
            question_start=question_offset(prompt, question),
        )
