"""RULER string-match metrics and prediction cleanup, against hand-computed values."""

import pytest

from eval.metrics.ruler import (
    postprocess_pred,
    sample_match_all,
    sample_match_part,
    string_match_all,
    string_match_part,
)


def test_postprocess_strips_and_turns_control_characters_into_newlines():
    assert postprocess_pred("  a\tb\x01c \n") == "a\nb\nc"
    assert postprocess_pred("\x00\x1f answer \x1f") == "answer"
    # DEL (0x7f) and printable text are left alone.
    assert postprocess_pred(" x\x7fy ") == "x\x7fy"


def test_string_match_all_averages_the_found_share_per_sample():
    preds = ["The answer is 123 and 456", "nothing here"]
    refs = [["123", "456", "789"], ["x-ray"]]
    # (2/3 + 0) / 2 * 100 = 33.333... -> 33.33
    assert string_match_all(preds, refs) == 33.33
    assert string_match_all(["ABC def"], [["abc", "DEF"]]) == 100.0  # case-insensitive


def test_string_match_part_counts_samples_with_any_reference():
    preds = ["Paris is big", "no idea", "It was LONDON"]
    refs = [["paris", "france"], ["yes"], ["Rome", "london"]]
    assert string_match_part(preds, refs) == pytest.approx(66.67)
    assert string_match_all(preds, refs) == pytest.approx(round((0.5 + 0 + 0.5) / 3 * 100, 2))


def test_matching_is_plain_substring_without_word_boundaries():
    # RULER's `r.lower() in pred.lower()`: a reference inside a longer number still counts.
    assert sample_match_all("1234567", ["123"]) == 100.0
    assert sample_match_all("7 and 9", ["7", "8"]) == 50.0
    assert sample_match_part("", ["a"]) == 0.0


def test_per_sample_values_average_to_the_corpus_score():
    preds = ["a b", "a", "c"]
    refs = [["a", "b", "z"], ["a"], ["x", "y"]]
    per_sample = [sample_match_all(p, r) for p, r in zip(preds, refs, strict=True)]
    assert per_sample == pytest.approx([200 / 3, 100.0, 0.0])
    assert round(sum(per_sample) / len(per_sample), 2) == string_match_all(preds, refs) == 55.56
    assert string_match_part(preds, refs) == 66.67
