"""RULER frequent words extraction (fwe): find the three most frequent coded words in a Zipf text.

Construction follows RULER ``scripts/data/synthetic/freq_words_extraction.py`` (docs/ruler.md,
"How samples are made"): a vocabulary of ``budget // 50`` random 6-letter words, fixed-seed shuffled, rank 1
replaced by "..."; word k appears ``int(num_words * k**-alpha / zeta(alpha))`` times; the words are
shuffled with a fixed-seed ``Random(seed)``. The answers are ranks 2-4.
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from eval.benchmarks.base import question_offset, text_after
from eval.benchmarks.ruler.fit import Draft, SizedGenerator, TokenCounter
from eval.benchmarks.ruler.templates import TEMPLATES
from lava.errors import UserError

# Bernoulli numbers B2, B4, ..., B16 for the Euler-Maclaurin tail of the zeta series.
_BERNOULLI = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6, -3617 / 510)


def zeta(s: float, terms: int = 16) -> float:
    """Riemann zeta for real ``s > 1`` (replaces ``scipy.special.zeta``; relative error below 1e-15).

    Sums the first ``terms - 1`` terms directly and the tail with Euler-Maclaurin.
    """
    if s <= 1:
        raise ValueError(f"zeta(s) needs s > 1, got {s}")
    n = float(terms)
    total = math.fsum(k**-s for k in range(1, terms))
    total += n ** (1 - s) / (s - 1) + 0.5 * n**-s
    rising = s  # s (s+1) ... (s+2j-2), the falling derivative factor of x**-s
    for j, b in enumerate(_BERNOULLI, start=1):
        total += b / math.factorial(2 * j) * rising * n ** (-s - 2 * j + 1)
        rising *= (s + 2 * j - 1) * (s + 2 * j)
    return total


def zipf_counts(num_words: int, vocab_size: int, alpha: float) -> list[int]:
    """Occurrences of each rank: ``int(num_words * k**-alpha / zeta(alpha))`` for k = 1..vocab_size."""
    z = zeta(alpha)
    return [int(num_words * (k**-alpha) / z) for k in range(1, vocab_size + 1)]


@dataclass
class FreqWordsGenerator(SizedGenerator):
    """The fwe task. Size unit: ``num_words``, the Zipf total before truncation to integers.

    Parameters
    ----------
    length : int
        Target length in tokens, generation included.
    seed : int
        Run seed (fixed-seed shuffles use it).
    alpha : float
        Zipf exponent (RULER: 2.0).
    coded_wordlen : int
        Letters per coded word (RULER: 6).
    """

    length: int
    seed: int
    alpha: float = 2.0
    coded_wordlen: int = 6

    def __post_init__(self) -> None:
        self.tokens_to_generate = TEMPLATES["freq_words_extraction"].tokens_to_generate
        self.budget = self.length - self.tokens_to_generate
        self.vocab_size = self.budget // 50
        if self.vocab_size < 4 or self.budget // 32 < 1:
            raise UserError(f"fwe needs bench.lengths of at least 250 tokens, got {self.length}")

    def increment(self) -> int:
        return self.budget // 32

    def vocabulary(self, rng: random.Random) -> list[str]:
        """Unique random words, sorted, fixed-seed shuffled, the top rank replaced by '...'."""
        vocab = [
            "".join(rng.choices(string.ascii_lowercase, k=self.coded_wordlen)) for _ in range(self.vocab_size)
        ]
        while len(set(vocab)) < self.vocab_size:
            vocab.append("".join(rng.choices(string.ascii_lowercase, k=self.coded_wordlen)))
        vocab = sorted(set(vocab))
        random.Random(self.seed).shuffle(vocab)
        vocab[0] = "..."  # upstream treats the top-ranked word as noise
        return vocab

    def text(self, vocab: list[str], num_words: int) -> Draft:
        task = TEMPLATES["freq_words_extraction"]
        counts = zipf_counts(num_words, len(vocab), self.alpha)
        words = [w for w, c in zip(vocab, counts, strict=True) for _ in range(c)]
        random.Random(self.seed).shuffle(words)
        prompt = task.template.format(context=" ".join(words), query="")
        # Question part: "\nQuestion: Do not provide any explanation. ... in the above coded text?"
        question = text_after(task.template, "{context}", {"query": ""})
        return Draft(
            prompt=prompt,
            answer_prefix=task.answer_prefix,
            references=vocab[1:4],
            meta={"counts": dict(zip(vocab[:4], counts[:4], strict=True)), "num_words": num_words},
            question_start=question_offset(prompt, question),
        )

    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        return self.text(self.vocabulary(rng), size)

    def find_size(self, count: TokenCounter, probe_rng: Callable[[], random.Random]) -> int:
        """RULER's growth search: from ``budget // 6`` words, step up until the budget is reached, back off one."""
        vocab = self.vocabulary(probe_rng())
        num_words = self.budget // self.coded_wordlen
        while count(*self._texts(vocab, num_words)) < self.budget:
            num_words += self.increment()
        return num_words - self.increment()

    def _texts(self, vocab: list[str], num_words: int) -> tuple[str, str]:
        draft = self.text(vocab, num_words)
        return draft.prompt, draft.answer_prefix

    def fit_sample(
        self, size: int, count: TokenCounter, rng_factory: Callable[[], random.Random], index: int
    ) -> Draft:
        """A fresh vocabulary at ``size`` words, shrunk by one step while it exceeds the budget."""
        vocab = self.vocabulary(rng_factory())
        num_words = size
        draft = self.text(vocab, num_words)
        while (tokens := count(draft.prompt, draft.answer_prefix)) > self.budget:
            num_words -= self.increment()
            if num_words <= 0:
                raise UserError(f"fwe cannot fit in {self.length} tokens; use larger bench.lengths")
            draft = self.text(vocab, num_words)
        draft.meta.update(haystack_size=num_words, length_tokens=tokens + self.tokens_to_generate)
        return draft
