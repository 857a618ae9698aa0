"""Needle-in-a-Haystack scores (docs/niah.md, "Scores")."""

from __future__ import annotations

from rouge_score import rouge_scorer

# The expected words of the needle answer, as in LAVa's `run_needle_visulize.py` (MGDDestiny/Lava,
# experiments/needle_in_haystack): lower-cased, no final period, 11 distinct words ("a" twice).
NEEDLE_ANSWER = "eat a sandwich and sit in dolores park on a sunny day"

_ROUGE = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def unigram_recall(response: str, expected: str = NEEDLE_ANSWER) -> float:
    """LAVa's NIAH score: ``|set(response words) & set(expected words)| / |set(expected words)|``.

    Scoring rule of LAVa's `run_needle_visulize.py`: the response is lower-cased, every ``"."`` is
    replaced by a space, and both sides are split on whitespace. So "day." matches "day", while any
    other punctuation stays attached to its word ("day!" does not match). KVCache-Factory's
    visualiser keeps the period in its expected words instead ("day."); both give a verbatim answer
    1.0, they differ only on a response without the final period.
    """
    expected_words = set(expected.lower().split())
    if not expected_words:
        return 0.0
    response_words = set(response.lower().replace(".", " ").split())
    return len(response_words & expected_words) / len(expected_words)


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
