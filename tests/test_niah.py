"""NIAH: needle insertion rules and the three scores, against hand-computed values."""

import pytest

from eval.benchmarks.base import PromptContext
from eval.benchmarks.niah import NEEDLE, NeedleHaystack, insert_needle
from eval.metrics.niah import exact_match, rouge1_f, unigram_recall

PERIOD = 0


def test_insert_moves_back_to_the_previous_period():
    hay = [5, 6, PERIOD, 7, 8, 9, PERIOD, 10, 11, 12, 13, 14]
    needle = [99, 98]
    # length 10 -> context of 8 haystack tokens; depth 87.5% -> point 7, just after the period at index 6
    assert insert_needle(hay, needle, 10, 87.5, {PERIOD}) == [5, 6, PERIOD, 7, 8, 9, PERIOD, 99, 98, 10]
    # depth 75% -> point 6 -> walks back to just after the period at index 2
    assert insert_needle(hay, needle, 10, 75, {PERIOD}) == [5, 6, PERIOD, 99, 98, 7, 8, 9, PERIOD, 10]
    # depth 0 -> the very start; depth 100 -> appended
    assert insert_needle(hay, needle, 10, 0, {PERIOD})[:2] == needle
    assert insert_needle(hay, needle, 10, 100, {PERIOD})[-2:] == needle
    assert all(len(insert_needle(hay, needle, 10, d, {PERIOD})) == 10 for d in (0, 33, 60, 100))


def test_scores_hand_computed():
    answer = "eat a sandwich and sit in dolores park on a sunny day"
    assert unigram_recall(answer) == 1.0
    # "day." keeps its period (upstream quirk): 10 of the 11 distinct words match
    assert unigram_recall("Eat a sandwich and sit in Dolores Park on a sunny day.") == pytest.approx(10 / 11)
    assert unigram_recall("sit in the park") == pytest.approx(3 / 11)  # sit, in, park
    assert unigram_recall("") == 0.0
    assert exact_match("You should eat a sandwich and sit in Dolores Park on a sunny day!") == 1.0
    assert exact_match("eat a sandwich") == 0.0
    assert rouge1_f("", NEEDLE) == 0.0
    # "sandwich" and "park" vs the 21-token needle: P = 2/2, R = 2/21 -> F = 2 * (2/21) / (1 + 2/21) = 4/23
    assert rouge1_f("sandwich park", NEEDLE.strip()) == pytest.approx(4 / 23)


def test_samples_fit_their_length_and_contain_the_needle(smollm2_tokenizer):
    bench = NeedleHaystack(lengths=[400, 700], depths=[0, 50, 100])
    ctx = PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500)
    samples = list(bench.samples(ctx))
    assert [s.id for s in samples] == [f"niah_L{n}_D{d}" for n in (400, 700) for d in (0, 50, 100)]
    for s in samples:
        assert NEEDLE.strip() in s.prompt
        assert s.prompt.startswith("<|im_start|> This is a very long story book: <book> ")
        assert s.prompt.endswith("Question: The best thing to do in San Francisco is: \nAnswer:")
        tokens = len(smollm2_tokenizer.encode(s.prompt, add_special_tokens=False))
        assert s.meta["length"] - bench.buffer - 5 <= tokens <= s.meta["length"]
        assert not s.chat and s.stop_newline
    mid = samples[1].prompt
    before = mid[: mid.index("The best thing")]
    assert before.rstrip().endswith(".")  # period-aligned


def test_bad_grid_is_a_user_error():
    from lava.errors import UserError

    with pytest.raises(UserError):
        NeedleHaystack(lengths=[100], buffer=200)
    with pytest.raises(UserError):
        NeedleHaystack(depths=[150])
