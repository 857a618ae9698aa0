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
    # LAVa's visualiser turns every "." into a space: the verbatim answer with its period scores 1.0
    assert unigram_recall("Eat a sandwich and sit in Dolores Park on a sunny day.") == 1.0
    # eat, a, sandwich ("sandwich." loses its period) of the 11 distinct words
    assert unigram_recall("eat a sandwich.") == pytest.approx(3 / 11)
    assert unigram_recall("sit in the park") == pytest.approx(3 / 11)  # sit, in, park
    # other punctuation stays attached: "sandwich," "park!" and "day?" match nothing, "and" is missing;
    # eat, a, sit, in, dolores, on, sunny remain
    assert unigram_recall("eat a sandwich, sit in Dolores park! on a sunny day?") == pytest.approx(7 / 11)
    # a period inside a word splits it: "park.on" -> "park", "on"
    assert unigram_recall("park.on") == pytest.approx(2 / 11)
    assert unigram_recall("") == 0.0
    assert exact_match("You should eat a sandwich and sit in Dolores Park on a sunny day!") == 1.0
    assert exact_match("eat a sandwich") == 0.0
    assert rouge1_f("", NEEDLE) == 0.0
    # "sandwich" and "park" vs the 21-token needle: P = 2/2, R = 2/21 -> F = 2 * (2/21) / (1 + 2/21) = 4/23
    assert rouge1_f("sandwich park", NEEDLE.strip()) == pytest.approx(4 / 23)


def test_score_matches_lava_visualiser_rule():
    """Loop-based transcription of LAVa's run_needle_visulize.py scoring, on varied responses."""

    def lava_score(response: str) -> float:
        expected = "eat a sandwich and sit in Dolores Park on a sunny day".lower().split()
        words = []
        for word in response.lower().replace(".", " ").split():
            if word not in words:
                words.append(word)
        unique_expected = []
        for word in expected:
            if word not in unique_expected:
                unique_expected.append(word)
        return sum(1 for w in unique_expected if w in words) / len(unique_expected)

    responses = [
        "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
        "Dolores Park.",
        "...sunny...day...",
        "EAT A SANDWICH!",
        "go to the Golden Gate Bridge",
        "sit in Dolores\tPark\non a sunny day",
    ]
    for response in responses:
        assert unigram_recall(response) == pytest.approx(lava_score(response)), response


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


def test_requested_prompt_tokens_bounds_the_longest_prompt(smollm2_tokenizer):
    from eval.sample_loop import build_prompt_ids
    from lava.models import as_spec
    from tests.conftest import model_config

    bench = NeedleHaystack(lengths=[400, 900], depths=[0, 50, 100])
    ctx = PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500)
    spec = as_spec(model_config())
    longest = max(len(build_prompt_ids(s, smollm2_tokenizer, spec)) for s in bench.samples(ctx))
    requested = bench.requested_prompt_tokens(ctx)
    # 900 - 200 context tokens plus the frame; junction merges may cost a token or two
    assert longest - 2 <= requested <= longest + 2
    assert NeedleHaystack(lengths=[99999]).requested_prompt_tokens(ctx) > 99999 - 200


def test_min_new_tokens_default_and_range():
    from lava.errors import UserError

    assert NeedleHaystack().min_new_tokens == 0
    with pytest.raises(UserError, match="min_new_tokens"):
        NeedleHaystack(min_new_tokens=-1)
    with pytest.raises(UserError, match="min_new_tokens"):
        NeedleHaystack(min_new_tokens=31, max_new_tokens=30)


def test_period_override_changes_the_insertion_point():
    # "Ġ." style id 1 counts as a period only when the override (or the vocabulary) says so
    hay = [5, 0, 6, 7, 1, 8, 9, 10, 11, 12]
    needle = [99]
    assert insert_needle(hay, needle, 10, 60, {0}) == [5, 0, 99, 6, 7, 1, 8, 9, 10, 11]
    assert insert_needle(hay, needle, 10, 60, {0, 1}) == [5, 0, 6, 7, 1, 99, 8, 9, 10, 11]


def test_niah_run_identity_changed():
    """Run folders of the old NIAH config (no version, no min_new_tokens) are not reused."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from eval.run_folder import run_dir_for
    from tests.conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        new = compose(config_name="config", overrides=["method=full"])
        old = compose(config_name="config", overrides=["method=full"])
    assert new.bench.version == 2 and new.bench.min_new_tokens == 0
    with open_dict(old):
        for key in ("version", "min_new_tokens", "period_ids"):
            del old.bench[key]
    assert run_dir_for(new) != run_dir_for(old)
    bumped = new.copy()
    bumped.bench.version = 3
    assert run_dir_for(bumped) != run_dir_for(new)
