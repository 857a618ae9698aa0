"""LongBench v1 metrics, ported from THUDM/LongBench ``LongBench/metrics.py`` and ``eval.py``.

Every function keeps upstream's behaviour, quirks included, because published LongBench numbers
were computed with them:

- ``classification_score`` removes items from a list while iterating over it, so the item right
  after a removed one is never checked;
- ROUGE-L is the ``rouge`` 1.0.1 package: case-sensitive, "sentences" split on ``.``, unique-token
  union-LCS; any exception (an empty prediction, for one) scores 0;
- ``code_sim_score`` uses fuzzywuzzy's ``fuzz.ratio`` with the python-Levenshtein backend, which is
  rounded to an integer percentage and differs from the difflib fallback;
- ``count_score`` and the retrieval scores reward the fraction of numbers in the prediction that
  are right, not whether the right one is present.

All functions are pure: ``(prediction, ground_truth, **kwargs) -> float`` in ``[0, 1]``.
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from fuzzywuzzy import fuzz
from rouge import Rouge

from lava.errors import UserError

# Full-width and CJK punctuation removed by normalize_zh_answer (LongBench/metrics.py, verbatim).
_CN_PUNCTUATION = "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
_EN_PUNCTUATION = set(string.punctuation)
_ZH_PUNCTUATION = set(string.punctuation + _CN_PUNCTUATION)


def normalize_answer(text: str) -> str:
    """SQuAD-style English normalisation: lower, drop ASCII punctuation, articles, extra spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _EN_PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """Chinese normalisation: lower, drop ASCII and CJK punctuation, drop *all* whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _ZH_PUNCTUATION)
    return "".join(text.split())


def _jieba_tokens(text: str) -> list[str]:
    import jieba  # imported lazily: building its dictionary costs about a second

    # jieba logs "Building prefix dict ..." on first use; keep it out of the progress output.
    jieba.setLogLevel(logging.WARNING)
    return list(jieba.cut(text, cut_all=False))


def token_f1(prediction: Sequence[str], ground_truth: Sequence[str]) -> float:
    """Multiset token F1; 0 when nothing is shared (also when either side is empty)."""
    common = Counter(prediction) & Counter(ground_truth)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction)
    recall = num_same / len(ground_truth)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Token F1 after English normalisation (whitespace tokens)."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def qa_f1_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Token F1 over jieba words, each normalised, empty ones dropped."""

    def tokens(text: str) -> list[str]:
        normed = (normalize_zh_answer(tok) for tok in _jieba_tokens(text))
        return [tok for tok in normed if tok]

    return token_f1(tokens(prediction), tokens(ground_truth))


def rouge_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """ROUGE-L F of the ``rouge`` package; 0.0 on any exception, as upstream's bare ``except``."""
    try:
        scores = Rouge().get_scores([prediction], [ground_truth], avg=True)
    except Exception:  # upstream catches everything: empty hypothesis, recursion depth, ...
        return 0.0
    return float(scores["rouge-l"]["f"])


def rouge_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """ROUGE-L over jieba words joined by single spaces."""
    return rouge_score(" ".join(_jieba_tokens(prediction)), " ".join(_jieba_tokens(ground_truth)))


def classification_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """1/#matched class names if the gold is among them, else 0 (``all_classes`` keyword required).

    Class names that are substrings of the prediction match. Matches that are strict substrings
    of the gold are then dropped, but (as upstream) by removing from the list being iterated, which
    skips the element following each removal.
    """
    matches = [name for name in kwargs["all_classes"] if name in prediction]
    for name in matches:  # mutating while iterating: intentional, this is upstream's behaviour
        if name in ground_truth and name != ground_truth:
            matches.remove(name)
    return 1.0 / len(matches) if ground_truth in matches else 0.0


def _fraction_equal(prediction: str, target: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return sum(number == target for number in numbers) / len(numbers)


def retrieval_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """Fraction of the prediction's digit runs equal to the id in ``Paragraph <id>`` of the gold."""
    return _fraction_equal(prediction, re.findall(r"Paragraph (\d+)", ground_truth)[0])


def retrieval_zh_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """As :func:`retrieval_score` with the gold pattern ``段落<id>``."""
    return _fraction_equal(prediction, re.findall(r"段落(\d+)", ground_truth)[0])


def count_score(prediction: str, ground_truth: Any, **kwargs: Any) -> float:
    """Fraction of the prediction's digit runs equal to ``str(ground_truth)``."""
    return _fraction_equal(prediction, str(ground_truth))


def _check_fuzz_backend() -> None:
    # fuzzywuzzy silently falls back to difflib when python-Levenshtein is missing, and the two
    # give different ratios: refuse to score with the unpinned backend rather than report others.
    if not getattr(fuzz.SequenceMatcher, "__module__", "").endswith("StringMatcher"):
        raise UserError(
            "fuzzywuzzy is using difflib instead of python-Levenshtein; install "
            "python-Levenshtein==0.27.5 (`make setup`) so code_sim scores match LongBench"
        )


def code_sim_score(prediction: str, ground_truth: str, **kwargs: Any) -> float:
    """fuzz.ratio/100 of the first predicted line without a backtick, ``#`` or ``//``, and the gold."""
    _check_fuzz_backend()
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return fuzz.ratio(line, ground_truth) / 100


Metric = Callable[..., float]

# Task -> metric, as LongBench/eval.py ``dataset2metric``.
TASK_METRIC: dict[str, Metric] = {
    "narrativeqa": qa_f1_score,
    "qasper": qa_f1_score,
    "multifieldqa_en": qa_f1_score,
    "multifieldqa_zh": qa_f1_zh_score,
    "hotpotqa": qa_f1_score,
    "2wikimqa": qa_f1_score,
    "musique": qa_f1_score,
    "dureader": rouge_zh_score,
    "gov_report": rouge_score,
    "qmsum": rouge_score,
    "multi_news": rouge_score,
    "vcsum": rouge_zh_score,
    "trec": classification_score,
    "triviaqa": qa_f1_score,
    "samsum": rouge_score,
    "lsht": classification_score,
    "passage_retrieval_en": retrieval_score,
    "passage_count": count_score,
    "passage_retrieval_zh": retrieval_zh_score,
    "lcc": code_sim_score,
    "repobench-p": code_sim_score,
}

# Tasks whose prediction is cut to its first line before scoring (LongBench/eval.py ``scorer``).
FIRST_LINE_TASKS = frozenset({"trec", "triviaqa", "samsum", "lsht"})


def first_line(prediction: str) -> str:
    """The first line after leading newlines are stripped (other whitespace is kept)."""
    return prediction.lstrip("\n").split("\n")[0]


def score_prediction(
    task: str, prediction: str, references: Sequence[Any], all_classes: Sequence[str] | None = None
) -> float:
    """One sample's score: max over references of the task's metric, starting from 0.

    Parameters
    ----------
    task : str
        LongBench task name (without the ``_e`` suffix).
    prediction : str
        Decoded model output.
    references : sequence
        The record's ``answers``.
    all_classes : sequence of str, optional
        The record's ``all_classes`` (trec, lsht).

    Returns
    -------
    float
        Score in ``[0, 1]``.
    """
    metric = TASK_METRIC[task]
    if task in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    score = 0.0
    for reference in references:
        score = max(score, metric(prediction, reference, all_classes=all_classes))
    return score


def task_score(sample_scores: Sequence[float]) -> float:
    """LongBench's task number: ``round(100 * mean, 2)``; NaN for no samples (as ``np.mean([])``)."""
    if not sample_scores:
        return float("nan")
    return round(100 * sum(sample_scores) / len(sample_scores), 2)
