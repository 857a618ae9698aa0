"""RULER scores (docs/ruler.md, "Scores").

The scoring rules follow NVIDIA/RULER ``scripts/eval/synthetic/constants.py`` (string_match_all,
string_match_part) and ``scripts/eval/evaluate.py`` (``postprocess_pred``). The corpus-level
functions take lists of predictions and reference lists and return percentages rounded to two
places, as upstream; the per-sample functions return the un-rounded 0-100 contribution of one
sample, whose mean over samples is the upstream score before rounding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# RULER scripts/eval/evaluate.py `postprocess_pred`: every ASCII control character becomes "\n".
_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """Strip, replace every ``[\\x00-\\x1f]`` character with a newline, strip again (RULER evaluate.py)."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def sample_match_all(prediction: str, references: Sequence[str]) -> float:
    """Share of references found in the prediction (case-insensitive substring), times 100."""
    pred = prediction.lower()
    return sum(1.0 if r.lower() in pred else 0.0 for r in references) / len(references) * 100


def sample_match_part(prediction: str, references: Sequence[str]) -> float:
    """100 when any reference is a case-insensitive substring of the prediction, else 0."""
    pred = prediction.lower()
    return max(1.0 if r.lower() in pred else 0.0 for r in references) * 100


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER ``string_match_all``: mean over samples of the found share of references, x100, 2 places."""
    total = sum(
        sum(1.0 if r.lower() in p.lower() else 0.0 for r in refs) / len(refs)
        for p, refs in zip(predictions, references, strict=True)
    )
    return round(total / len(predictions) * 100, 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER ``string_match_part``: share of samples where any reference is found, x100, 2 places."""
    total = sum(
        max(1.0 if r.lower() in p.lower() else 0.0 for r in refs)
        for p, refs in zip(predictions, references, strict=True)
    )
    return round(total / len(predictions) * 100, 2)


SAMPLE_METRICS = {"string_match_all": sample_match_all, "string_match_part": sample_match_part}
