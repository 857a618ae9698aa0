"""InfiniteBench scorers: hand-computed cases, including the label forms of raw jsonl and of the hub schema."""

import pytest

from eval.metrics import infinitebench as ib


def test_first_int_match_takes_the_first_digit_run():
    assert ib.first_int_match("key: 071 432") == "071"
    assert ib.first_int_match("no digits") == ""


@pytest.mark.parametrize("label", [["71432"], "71432", [71432]])
def test_passkey_label_forms(label):
    assert ib.passkey_score("The pass key is 71432. Remember", label) == 1.0
    assert ib.passkey_score("7143 2", label) == 0.0  # first run is "7143"
    assert ib.passkey_score("", label) == 0.0


def test_number_string_uses_the_same_rule():
    assert ib.score_one("number_string", " 3000077442.", ["3000077442"]) == 1.0
    assert ib.score_one("number_string", " 30000 77442", ["3000077442"]) == 0.0


@pytest.mark.parametrize("label", [["5e6b-71"], "5e6b-71"])
def test_kv_retrieval_word_match(label):
    assert ib.kv_retrieval_score('"5e6b-71".', label) == 1.0
    assert ib.kv_retrieval_score("value:5e6b-71,", label) == 1.0
    assert ib.kv_retrieval_score("5e6b-71x", label) == 0.0  # whole words only
    assert ib.kv_retrieval_score("5e6b", label) == 0.0


@pytest.mark.parametrize("label", [[12], ["12"], "12", 12, ["-7"]])
def test_code_run_last_word_is_the_int(label):
    want = int(label[0] if isinstance(label, list) else label)
    assert ib.code_run_score(f"func_3(2) returns {want}.", label) == 1.0
    assert ib.code_run_score(f"{want} is the value", label) == 0.0  # the last word must be the number
    assert ib.code_run_score("", label) == 0.0


def test_code_debug_letter_prefix_and_answer_prefixes():
    label = ["foo_bar", "B"]
    assert ib.code_debug_score("B. foo_bar", label) == 1.0
    assert ib.code_debug_score(" B: because", label) == 1.0
    # "option" is blanked out, then "is:" is the first prefix found: the rest starts with "B".
    assert ib.code_debug_score("The correct option is: B", label) == 1.0
    assert ib.code_debug_score("My answer: foo_bar()", label) == 1.0
    assert ib.code_debug_score("My answer: A", label) == 0.0
    assert ib.code_debug_score("foo_bar", label) == 0.0  # no prefix, no leading letter
    assert ib.code_debug_score("The answer is:", label) == 0.0  # ends with the prefix


@pytest.mark.parametrize(
    ("label", "pred", "want"),
    [
        ([88], "88", 1.0),
        (["88"], "88 is it", 1.0),  # hub schema: a string label is cast to int
        ("88", "It is 88", 1.0),
        ([88], "87", 0.0),
        ([88], "none", 0.0),
        ([49.5], "49.5", 1.0),
        (["49.5"], "median: 49.5", 1.0),
        ([49.5], "49", 0.0),
        ([50.0], "50", 1.0),  # float label: the first number read as float
        ([88], "88.0", 1.0),  # decimal for an int label: upstream raises ValueError here
    ],
)
def test_math_find(label, pred, want):
    assert ib.math_find_score(pred, label) == want


@pytest.mark.parametrize("label", [[36, 61, 35, 40], ["36", "61", "35", "40"], [[36, 61, 35, 40]]])
def test_math_calc_prefix_fraction(label):
    assert ib.math_calc_score("[36, 61, 35, 99, 40]", label) == pytest.approx(3 / 4)
    assert ib.math_calc_score("[36, 0, 35, 40]", label) == pytest.approx(1 / 4)  # stops at the first miss
    assert ib.math_calc_score("36 61 35 40 1 2", label) == 1.0
    assert ib.math_calc_score("-36, -61", label) == pytest.approx(2 / 4)  # signs are lost
    assert ib.math_calc_score("[1, 36, 61]", label, drop_first=True) == pytest.approx(2 / 4)


def test_longdialogue_matches_first_label_as_one_word():
    label = ["ACE", "ACE ROTHSTEIN"]
    assert ib.longdialogue_qa_score("Ace Rothstein.", label) == 1.0
    assert ib.longdialogue_qa_score("NICKY", label) == 0.0
    assert ib.longdialogue_qa_score("ACE", "ACE") == 1.0  # a bare string label is not split into letters
    assert ib.longdialogue_qa_score("ACE ROTHSTEIN", ["ACE ROTHSTEIN"]) == 0.0  # upstream quirk


def test_longbook_choice_rules():
    label = ["The red door", "C"]
    assert ib.longbook_choice_score("C", label) == 1.0
    assert ib.longbook_choice_score("C) something else", label) == 1.0
    assert ib.longbook_choice_score("B. The red door", label) == 0.0  # the leading letter decides
    assert ib.longbook_choice_score("The red door", label) == 1.0  # equals a label item
    assert ib.longbook_choice_score("the answer is: C.", label) == 1.0
    assert ib.longbook_choice_score("the answer is D", label) == 0.0
    assert ib.longbook_choice_score("I pick C", label) == 1.0  # the first word that is a letter decides
    assert ib.longbook_choice_score("I pick D, not C", label) == 0.0
    assert ib.longbook_choice_score("my pick BC", label) == 0.0  # "BC" is a substring of "ABCD"
    assert ib.longbook_choice_score("   ", label) == 0.0


def test_longbook_qa_eng_token_f1_best_over_labels():
    assert ib.longbook_qa_eng_score("The Peyton.", ['"Peyton"']) == 1.0
    # pred tokens {peyton, smith}, gold {peyton}: P = 1/2, R = 1, F1 = 2/3
    assert ib.longbook_qa_eng_score("Peyton Smith", ["Peyton"]) == pytest.approx(2 / 3)
    assert ib.longbook_qa_eng_score("Peyton Smith", ["Nobody", "Peyton Smith"]) == 1.0
    assert ib.longbook_qa_eng_score("Peyton Smith", "Peyton") == pytest.approx(2 / 3)  # bare string label


def test_longbook_qa_chn_character_f1():
    # "北京" vs "北京市": P = 2/2, R = 2/3, F1 = 0.8 (characters, punctuation dropped)
    assert ib.longbook_qa_chn_score("北京。", ["北京市"]) == pytest.approx(0.8)
    assert ib.longbook_qa_chn_score("上海", ["北京市", "上海"]) == 1.0


def test_longbook_sum_is_rouge_lsum_with_newline_sentences():
    # Flat text "c d a b" vs "a c" has LCS 1, but ROUGE-Lsum takes the union LCS over the
    # prediction's lines ("c d" gives c, "a b" gives a): R = 2/2, P = 2/4, F = 2/3.
    assert ib.longbook_sum_score("c d\na b", ["a c"]) == pytest.approx(2 / 3)
    assert ib.longbook_sum_score("c d a b", ["a c"]) == pytest.approx(1 / 3)
    # LCS(a b c d, a c e) = 2: P = 2/4, R = 2/3, F = 4/7; a list label takes the best reference.
    assert ib.longbook_sum_score("a b c d", "a c e") == pytest.approx(4 / 7)
    assert ib.longbook_sum_score("a b c d", ["x y", "a c e"]) == pytest.approx(4 / 7)
    assert ib.longbook_sum_score("", ["a c e"]) == 0.0


def test_score_one_dispatches_all_twelve_tasks():
    assert len(ib.SCORERS) == 12
    assert ib.score_one("code_run", "The value is 4", ["4"]) == 1.0
    with pytest.raises(ValueError, match="unknown InfiniteBench task"):
        ib.score_one("passkey_eng", "1", ["1"])
