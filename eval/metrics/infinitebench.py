"""InfiniteBench per-sample scores, ported from OpenBMB/InfiniteBench ``src/compute_scores.py`` (@88b3daa).

Every rule keeps upstream's parsing, quirks included (longdialogue matches only the first label
as one upper-cased word; longbook_choice accepts any word that is a substring of "ABCD"). Upstream
was written for its own jsonl files, so labels need care that it does not take:

- labels may come wrapped in a list (raw jsonl) or as bare strings (a single label);
- the hub schema (``answer: Sequence(string)``) turns numeric answers into strings, so math_find,
  math_calc and code_run cast them back to numbers (upstream compares an int to the string and
  scores 0, or raises ``TypeError`` for math_find);
- kv_retrieval unwraps its one-item list (upstream tests ``list in words``, which is always false).

longbook_sum_eng is ROUGE-Lsum F of ``rouge_score`` exactly as the ``evaluate`` "rouge" wrapper
calls it (``use_stemmer=False``, ``score_multi`` over a label list), without loading that wrapper
from the hub. All scores lie in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from rouge_score import rouge_scorer

from eval.metrics.longbench import normalize_answer, normalize_zh_answer, token_f1

# Only rougeLsum is kept: score_multi picks the best reference per rouge type independently, so
# computing the other three types (as the evaluate wrapper does) cannot change it.
_ROUGE_LSUM = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)


def _labels(label: Any) -> list[Any]:
    """A label as a list: bare values become one-item lists."""
    if isinstance(label, (list, tuple)):
        return list(label)
    return [label]


def _unwrap(label: Any) -> Any:
    """The first label of a list, or the label itself (upstream's ``if isinstance(label, list)``)."""
    if isinstance(label, (list, tuple)):
        if not label:
            raise ValueError("empty label list")
        return label[0]
    return label


def _as_number(value: Any) -> int | float:
    """int or float from a label that the hub schema may have turned into a string ("88", "49.5")."""
    if isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return value
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


def first_int_match(prediction: str) -> str:
    """The first run of digits in ``prediction`` ("" if none)."""
    for item in re.split("[^0-9]", prediction):
        if item != "":
            return item
    return ""


def passkey_score(prediction: str, label: Any) -> float:
    """passkey and number_string: the first digit run equals the label string."""
    return float(str(_unwrap(label)) == first_int_match(prediction))


def kv_retrieval_score(prediction: str, label: Any) -> float:
    """The value is one of the words of the prediction after some punctuation becomes spaces."""
    for c in ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]:
        prediction = prediction.replace(c, " ")
    return float(str(_unwrap(label)) in prediction.split())


def code_run_score(prediction: str, label: Any) -> float:
    """The last word of the prediction, read as an int, equals the label."""
    target = int(_as_number(_unwrap(label)))
    prediction = prediction.strip()
    for c in ["\n", ".", "`", "'", '"', ":"]:
        prediction = prediction.replace(c, " ")
    words = prediction.split()
    if not words:
        return 0.0
    try:
        return float(int(words[-1]) == target)
    except ValueError:
        return 0.0


def code_debug_score(prediction: str, label: Sequence[str]) -> float:
    """Option letter or function name after an answer prefix; ``label = [function name, letter]``."""
    fn_name, letter = label[0], label[1]
    prediction = prediction.strip()
    if prediction[:2] in [f"{letter}.", f"{letter}:"]:
        return 1.0
    # Upstream's list, commented-out entries ("answer is", "error is") left out as there.
    ans_prefixes = ["answer is:", "is:", "answer:", "correct option is:"]
    for c in ["\n", "`", "'", '"', "-", "*", "Option", "option"]:
        prediction = prediction.replace(c, " ")
    while "  " in prediction:
        prediction = prediction.replace("  ", " ")
    for prefix in ans_prefixes:
        idx = prediction.find(prefix)
        if idx == -1:
            continue
        if len(prediction) < idx + len(prefix) + 1:  # the prediction ends with the prefix
            return 0.0
        after = prediction[idx + len(prefix) + 1 :]
        return float(any(after.startswith(s) for s in (letter, fn_name)))
    return 0.0


def math_find_score(prediction: str, label: Any) -> float:
    """The first number of the prediction equals the label (compared as int or float like the label)."""
    target = _as_number(_unwrap(label))
    first = re.search(r"\d+\.\d+|\d+", prediction)
    if first is None:
        return 0.0
    text = first.group(0).strip()
    if isinstance(target, int) and "." not in text:
        return float(int(text) == target)
    # A float label, or a decimal answer to an int label (upstream's int("3.0") raises there).
    return float(float(text) == target)


def math_calc_score(prediction: str, label: Any, *, drop_first: bool = False) -> float:
    """Fraction of the label list matched by the prediction's numbers, up to the first mismatch.

    Signs are lost (the values are all in 0..99 by construction). ``drop_first`` is upstream's
    GPT-4 rule (its prompt makes GPT-4 echo the first operand first).
    """
    values = _labels(label)
    if values and isinstance(values[0], (list, tuple)):
        values = list(values[0])
    target = [int(_as_number(v)) for v in values]
    if not target:
        raise ValueError("math_calc needs a non-empty label list")
    numbers = [int(item) for item in re.split("[^0-9]", prediction) if item != ""]
    if drop_first:
        numbers = numbers[1:]
    matched = 0
    for want, got in zip(target, numbers, strict=False):
        if want != got:
            break
        matched += 1
    return matched / len(target)


def longdialogue_qa_score(prediction: str, label: Any) -> float:
    """The first label is one of the upper-cased words of the prediction."""
    name = str(_unwrap(label))
    prediction = prediction.strip()
    for c in ["\n", ":", '"', "'", ".", ",", "?", "!", "{", "}"]:
        prediction = prediction.replace(c, " ")
    return float(name in [w.upper() for w in prediction.split()])


def longbook_choice_score(prediction: str, label: Sequence[str]) -> float:
    """Multiple choice: a leading letter, an exact option, a letter after an answer prefix, or the first letter word.

    ``label = [option text, letter]``.
    """
    label = _labels(label)
    prediction = prediction.strip()
    if prediction == "":
        return 0.0
    if prediction[0] in "ABCD":
        return float(prediction[0] in label)
    if prediction in label:
        return 1.0
    for c in ["\n", '"', "'", ".", ",", "?", "!", "{", "}"]:
        prediction = prediction.replace(c, " ")
    while "  " in prediction:
        prediction = prediction.replace("  ", " ")
    for prefix in ["answer is:", "answer:", "answer is", "option is"]:
        idx = prediction.find(prefix)
        if idx == -1:
            continue
        if len(prediction) < idx + len(prefix) + 1:
            return 0.0
        after = prediction[idx + len(prefix) + 1 :]
        return float(any(after.startswith(s) for s in label))
    # Upstream tests `word in "ABCD"`: a substring test, so "AB" or "BC" also count as letter words.
    for word in prediction.split():
        if word in "ABCD":
            return float(word in label)
    return 0.0


def longbook_qa_eng_score(prediction: str, label: Any) -> float:
    """SQuAD token F1 after normalisation, best over the labels."""
    best = 0.0
    for truth in _labels(label):
        pred_tokens = normalize_answer(prediction).split()
        best = max(best, token_f1(pred_tokens, normalize_answer(str(truth)).split()))
    return best


def longbook_qa_chn_score(prediction: str, label: Any) -> float:
    """Character F1 after Chinese normalisation (one character, one token), best over the labels."""
    best = 0.0
    for truth in _labels(label):
        best = max(
            best, token_f1(list(normalize_zh_answer(prediction)), list(normalize_zh_answer(str(truth))))
        )
    return best


def longbook_sum_score(prediction: str, label: Any) -> float:
    """ROUGE-Lsum F (``rouge_score``, no stemming); the best reference when the label is a list."""
    if isinstance(label, (list, tuple)):
        return float(_ROUGE_LSUM.score_multi([str(x) for x in label], prediction)["rougeLsum"].fmeasure)
    return float(_ROUGE_LSUM.score(str(label), prediction)["rougeLsum"].fmeasure)


SCORERS: dict[str, Callable[[str, Any], float]] = {
    "passkey": passkey_score,
    "number_string": passkey_score,
    "kv_retrieval": kv_retrieval_score,
    "code_run": code_run_score,
    "code_debug": code_debug_score,
    "longdialogue_qa_eng": longdialogue_qa_score,
    "longbook_qa_eng": longbook_qa_eng_score,
    "longbook_sum_eng": longbook_sum_score,
    "longbook_choice_eng": longbook_choice_score,
    "longbook_qa_chn": longbook_qa_chn_score,
    "math_find": math_find_score,
    "math_calc": math_calc_score,
}


def score_one(task: str, prediction: str, label: Any) -> float:
    """Score one prediction of ``task`` against its label (``get_score_one`` upstream), in [0, 1]."""
    try:
        scorer = SCORERS[task]
    except KeyError:
        raise ValueError(f"unknown InfiniteBench task {task!r}; known: {sorted(SCORERS)}") from None
    return float(scorer(prediction, label))
