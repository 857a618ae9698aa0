"""LongBench metrics against hand-computed values, upstream quirks included (LongBench/metrics.py)."""

import pytest

from eval.metrics import longbench as m

TREC_LIKE = ["Other", "number", "Other number", "Date", "City"]


# --- qa_f1 (English) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The Eiffel Tower!", "Eiffel tower", 1.0),  # case, punctuation and "the" normalised away
        ("in Paris, France", "Paris", 0.5),  # P = 1/3, R = 1 -> 2PR/(P+R) = 0.5
        ("paris paris", "paris", 2 / 3),  # multiset: one common token, P = 1/2, R = 1
        ("an apple", "apple", 1.0),  # article removed as a whole word
        ("", "paris", 0.0),  # empty prediction
        ("the", "a", 0.0),  # both normalise to nothing: no common token -> 0, not a division error
    ],
)
def test_qa_f1(prediction, gold, expected):
    assert m.qa_f1_score(prediction, gold) == pytest.approx(expected)


def test_qa_f1_removes_punctuation_before_articles():
    # lower -> punctuation -> articles: "the-end" becomes "theend", which is not an article, so no
    # match with "end". Removing articles first would give "end" and F1 = 1.
    assert m.normalize_answer("the-end") == "theend"
    assert m.qa_f1_score("the-end", "end") == 0.0


def test_normalize_answer_keeps_non_ascii_punctuation():
    # Only string.punctuation is removed; the typographic apostrophe stays.
    assert m.normalize_answer("Mara’s  DOG.") == "mara’s dog"


# --- qa_f1_zh -----------------------------------------------------------------------------------


def test_qa_f1_zh():
    # jieba: 我爱北京 -> 我 / 爱 / 北京; P = 1/3, R = 1 -> 0.5
    assert m.qa_f1_zh_score("我爱北京", "北京") == pytest.approx(0.5)
    # "。" normalises to an empty token, which is dropped: exact match
    assert m.qa_f1_zh_score("北京。", "北京") == 1.0
    assert m.qa_f1_zh_score("", "北京") == 0.0


def test_normalize_zh_answer_drops_all_whitespace_and_cjk_punctuation():
    assert m.normalize_zh_answer("Ａ B，c！") == "ａbc"


# --- rouge-L (the `rouge` package) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        # m = 5 unique gold words, n = 3, union LCS = 3: R = 3/5, P = 1 -> F = 0.75
        ("the cat sat", "the cat sat on the mat", 0.75),
        # case-sensitive: "The" does not match "the"; LCS = 2: R = 2/5, P = 2/3 -> F = 0.5
        ("The cat sat", "the cat sat on the mat", 0.5),
        # no sentence split: LCS("sat the cat", "the cat sat") = 2 -> F = 2/3
        ("sat the cat", "the cat sat", 2 / 3),
        # split on "." into "sat" and "the cat": the union LCS covers all 3 words -> F = 1
        ("sat. the cat", "the cat sat", 1.0),
        # unique-token counting: n = |{cat}| = 1 -> F = 1
        ("cat cat cat", "cat", 1.0),
        ("", "cat", 0.0),  # empty hypothesis: ValueError inside rouge -> 0
        ("...", "cat", 0.0),  # only dots: no sentence left -> ValueError -> 0
        ("cat", "", 0.0),  # empty reference: ValueError -> 0
    ],
)
def test_rouge_score(prediction, gold, expected):
    # The package adds 1e-8 to the F denominator, hence approx.
    assert m.rouge_score(prediction, gold) == pytest.approx(expected, abs=1e-6)


def test_rouge_score_any_exception_scores_zero():
    # rouge's LCS reconstruction recurses once per matched word: a 1100-word sentence exceeds
    # Python's recursion limit, and upstream's bare except turns even a perfect match into 0.
    text = " ".join(f"w{i}" for i in range(1100))
    assert m.rouge_score(text, text) == 0.0


def test_rouge_zh_score():
    # jieba: 我 爱 北京 vs 我 爱 北京 天安门: R = 3/4, P = 1 -> F = 6/7
    assert m.rouge_zh_score("我爱北京", "我爱北京天安门") == pytest.approx(6 / 7, abs=1e-6)
    assert m.rouge_zh_score("", "我爱北京") == 0.0


# --- classification -----------------------------------------------------------------------------


def test_classification_exact_and_ambiguous():
    assert m.classification_score("Date", "Date", all_classes=TREC_LIKE) == 1.0
    # two class names found, neither inside the gold: 1/2
    assert m.classification_score("Date or City", "Date", all_classes=TREC_LIKE) == 0.5
    assert m.classification_score("", "Date", all_classes=TREC_LIKE) == 0.0
    assert m.classification_score("City", "Date", all_classes=TREC_LIKE) == 0.0


def test_classification_remove_while_iterating_quirk():
    # Matches: [Other, number, Other number]. "Other" is a strict substring of the gold and is
    # removed; the iteration then skips "number" (now at index 0), so it stays in the list.
    # Upstream therefore scores 1/2 where the intended rule would give 1.
    assert m.classification_score("Other number", "Other number", all_classes=TREC_LIKE) == 0.5


def test_classification_substring_of_gold_removed_when_not_skipped():
    # Matches: [Other, Other number]; "Other" is removed, nothing is skipped after it -> 1/1.
    classes = ["Other", "Other number"]
    assert m.classification_score("Other number", "Other number", all_classes=classes) == 1.0


# --- retrieval and count ------------------------------------------------------------------------


def test_retrieval_score():
    assert m.retrieval_score("Paragraph 3", "Paragraph 3") == 1.0
    # two numbers, one right: 1/2
    assert m.retrieval_score("Paragraph 3 or Paragraph 13", "Paragraph 3") == 0.5
    # digit runs are compared whole: 12 != 1
    assert m.retrieval_score("The answer is Paragraph 12", "Paragraph 1") == 0.0
    assert m.retrieval_score("", "Paragraph 1") == 0.0
    assert m.retrieval_score("no idea", "Paragraph 1") == 0.0


def test_retrieval_zh_score():
    assert m.retrieval_zh_score("段落2", "段落2") == 1.0
    assert m.retrieval_zh_score("答案是段落2，不是段落5", "段落2") == 0.5
    assert m.retrieval_zh_score("", "段落2") == 0.0


def test_count_score():
    assert m.count_score("There are 7 unique paragraphs out of 12", "7") == 0.5
    assert m.count_score("7", 7) == 1.0  # the gold is compared as str(gold)
    assert m.count_score("07", "7") == 0.0  # string comparison, not numeric
    assert m.count_score("", "7") == 0.0


# --- code similarity ----------------------------------------------------------------------------


def test_code_sim_first_non_comment_line():
    pred = "\n\n# comment\n    return x\n"
    assert m.code_sim_score(pred, "    return x") == 1.0
    # a line with a backtick (markdown fence) is skipped, as is one containing "//"
    assert m.code_sim_score("```python\nfoo()\n```", "foo()") == 1.0
    assert m.code_sim_score("url = 'http://a'\nbar()", "bar()") == 1.0


def test_code_sim_rounded_ratio():
    # Levenshtein ratio = 2 * LCS / (len1 + len2) = 4/6, rounded to an integer percent: 0.67
    assert m.code_sim_score("abc", "abd") == 0.67


def test_code_sim_uses_levenshtein_backend():
    # LCS("print(x)", "x = bar(b, a)") = 3 ("r", "(", ")"): 6/21 -> 29. difflib's matcher finds only
    # 2 matching characters here and would give 0.19.
    assert m.code_sim_score("print(x)", "x = bar(b, a)") == 0.29


def test_code_sim_empty_cases():
    assert m.code_sim_score("", "x = 1") == 0.0
    # every line is a comment: the prediction becomes "" -> 0 against a non-empty gold ...
    assert m.code_sim_score("# a\n// b", "x = 1") == 0.0
    # ... but fuzz.ratio checks equality before emptiness, so "" vs "" scores 100
    assert m.code_sim_score("# a", "") == 1.0


# --- per-sample and per-task rules --------------------------------------------------------------


def test_first_line():
    assert m.first_line("\n\nDate\nCity") == "Date"
    assert m.first_line("  Date \nx") == "  Date "  # only newlines are stripped
    assert m.first_line("") == ""


def test_score_prediction_cuts_first_line_for_few_shot_tasks():
    # trec is cut to its first line: only "Date" remains -> 1.0; uncut it would match two classes.
    assert m.score_prediction("trec", "\nDate\nCity", ["Date"], TREC_LIKE) == 1.0
    # triviaqa is cut too: the second line is ignored
    assert m.score_prediction("triviaqa", "Paris\nQuestion: x", ["Paris"]) == 1.0
    # hotpotqa is not cut: "paris question x" vs "paris" -> P = 1/3 -> 0.5
    assert m.score_prediction("hotpotqa", "Paris\nQuestion: x", ["Paris"]) == pytest.approx(0.5)


def test_score_prediction_max_over_references():
    assert m.score_prediction("narrativeqa", "the dog", ["a cat", "dog"]) == 1.0
    assert m.score_prediction("narrativeqa", "", ["dog"]) == 0.0
    assert m.score_prediction("passage_count", "3", ["3"]) == 1.0


def test_task_score_rounds_mean_times_100():
    assert m.task_score([1.0, 0.0, 0.0]) == 33.33
    assert m.task_score([2 / 3]) == 66.67
    assert m.task_score([]) != m.task_score([])  # NaN, as np.mean([]) upstream


def test_every_task_has_a_metric():
    from eval.benchmarks.longbench_tasks import ALL_TASKS

    assert set(m.TASK_METRIC) == set(ALL_TASKS)
    assert m.TASK_METRIC["multifieldqa_zh"] is m.qa_f1_zh_score  # not the English F1
