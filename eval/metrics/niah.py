"""Needle-in-a-Haystack scores (benchmarks.md section 2.2)."""

from __future__ import annotations

from rouge_score import rouge_scorer

# PyramidKV / LAVa visualiser: the expected words of the needle answer, lower-cased, the final '.' dropped
# (LAVa's copy of `visualize.py`); the score divides by the size of the word *set* (11 words).
NEEDLE_ANSWER = "eat a sandwich and sit in dolores park on a sunny day"

_ROUGE = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def unigram_recall(response: str, expected: str = NEEDLE_ANSWER) -> float:
    """|set(response words) & set(expected words)| / |set(expected words)|, lower-cased, whitespace split.

    Punctuation stays attached to words, as in the upstream visualiser: "day." does not match "day".
    """
    expected_words = set(expected.lower().split())
    if not expected_words:
        return 0.0
    return len(set(response.lower().split()) & expected_words) / len(expected_words)


def rouge1_f(response: str, needle: str) -> float:
    """ROUGE-1 F-measure of the response against the needle (Porter stemming), 0 for an empty response.

    PyramidKV stores this times 10; we keep the 0-1 scale.
    """
    if not response.strip():
        return 0.0
    return _ROUGE.score(needle, response)["rouge1"].fmeasure


def exact_match(response: str, expected: str = NEEDLE_ANSWER) -> float:
    """1.0 when the whole expected answer appears in the response (case-insensitive substring)."""
    return float(expected.lower() in response.lower())
