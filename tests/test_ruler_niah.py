"""RULER NIAH generators with the embedded model's tokenizer: length, needles, answers, placement."""

import random
import re
from pathlib import Path

import pytest
import yaml

from eval.benchmarks.base import PromptContext
from eval.benchmarks.ruler import Ruler
from eval.benchmarks.ruler.benchmark import sample_rng
from eval.benchmarks.ruler.essay import essay_sentences
from eval.benchmarks.ruler.fit import TokenCounter
from eval.benchmarks.ruler.niah import DEPTHS, insert_into_lines, insert_into_sentences, query_text
from eval.benchmarks.ruler.tasks import make_generator
from eval.benchmarks.ruler.templates import NOISE
from eval.sample_loop import build_prompt_ids
from lava.models import as_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = as_spec(yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text()))
LENGTH = 1024
NIAH_TASKS = [
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def generate(tokenizer, task, length=LENGTH, n=3, seed=42):
    bench = Ruler(tasks=[task], lengths=[length], num_samples=n, cache=False)
    ctx = PromptContext(tokenizer=tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500, seed=seed)
    return list(bench.samples(ctx))


@pytest.fixture(scope="module")
def niah_samples(smollm2_tokenizer):
    return {task: generate(smollm2_tokenizer, task) for task in NIAH_TASKS}


@pytest.mark.parametrize("task", NIAH_TASKS)
def test_prompt_plus_generation_fits_and_fills_the_length(niah_samples, smollm2_tokenizer, task):
    for s in niah_samples[task]:
        # Counted independently, with the runner's own prompt builder.
        total = len(build_prompt_ids(s, smollm2_tokenizer, SPEC)) + s.max_new_tokens
        assert total == s.meta["length_tokens"]
        assert 0.9 * LENGTH <= total <= LENGTH
        assert s.max_new_tokens == 128
        assert s.chat and not s.stop_newline


@pytest.mark.parametrize("task", NIAH_TASKS)
def test_every_needle_is_in_the_context_once_and_answers_are_the_queried_values(niah_samples, task):
    for s in niah_samples[task]:
        needles = s.meta["needles"]
        for needle in needles:
            assert s.prompt.count(needle) == 1
        query = s.answer_prefix.split(" for ", 1)[1].rsplit(" mentioned", 1)[0]
        keys = query.replace(", and ", ", ").split(", ")
        assert f"for {query} mentioned in the provided text?" in s.prompt
        expected = [
            m.group(2)
            for key in keys
            for needle in needles
            if (m := re.fullmatch(r"One of the special magic \w+ for (.+) is: (.+)\.", needle))
            and m.group(1) == key
        ]
        assert sorted(s.references) == sorted(expected)
        assert all(ref in s.prompt for ref in s.references)


def test_needle_counts_and_value_types(niah_samples):
    shape = {  # task: (needles, answers, queried keys)
        "niah_single_1": (1, 1, 1),
        "niah_multikey_1": (4, 1, 1),
        "niah_multivalue": (4, 4, 1),
        "niah_multiquery": (4, 4, 4),
    }
    for task, (num_needles, num_answers, num_keys) in shape.items():
        for s in niah_samples[task]:
            assert len(s.meta["needles"]) == num_needles
            assert len(s.references) == num_answers
            assert s.answer_prefix.count(",") + 1 == num_keys
    for s in niah_samples["niah_single_1"] + niah_samples["niah_multiquery"]:
        assert all(re.fullmatch(r"\d{7}", v) and 10**6 <= int(v) < 10**7 for v in s.references)
    for s in niah_samples["niah_single_3"]:
        assert re.fullmatch(UUID, s.references[0])
        assert re.search(r"for [a-z]+(-[a-z]+)+ mentioned", s.answer_prefix)  # adjective-noun key
    for s in niah_samples["niah_multikey_3"]:
        assert re.fullmatch(UUID, s.references[0])
        assert re.search(f"for {UUID} mentioned", s.answer_prefix)


def test_singular_rewrite_only_when_one_value_is_asked(niah_samples):
    single = niah_samples["niah_single_2"][0]
    assert single.prompt.startswith("A special magic number is hidden within the following text.")
    assert "What is the special magic number for " in single.prompt
    assert single.answer_prefix.startswith(" The special magic number for ")
    assert single.answer_prefix.endswith(" mentioned in the provided text is")
    multi = niah_samples["niah_multivalue"][0]
    assert multi.prompt.startswith("Some special magic numbers are hidden within the following text.")
    assert "What are all the special magic numbers for " in multi.prompt
    assert multi.answer_prefix.endswith(" mentioned in the provided text are")
    # The needle sentence keeps the plural type in both cases.
    assert single.meta["needles"][0].startswith("One of the special magic numbers for ")


def test_haystack_kinds(niah_samples):
    noise = niah_samples["niah_single_1"][0]
    lines = noise.prompt.split("\n")[1:-1]
    assert sum(line == NOISE for line in lines) == len(lines) - 1
    needle_hay = niah_samples["niah_multikey_2"][0]
    lines = needle_hay.prompt.split("\n")[1:-1]
    assert len(lines) > 10
    assert all(
        re.fullmatch(r"One of the special magic numbers for [a-z]+(-[a-z]+)+ is: \d{7}\.", x) for x in lines
    )
    essay = niah_samples["niah_single_2"][0]
    context = essay.prompt.split("\n")[1]
    assert len(essay.prompt.split("\n")) == 3  # the essay haystack is one whitespace-normalised line
    assert "July 2010What hard liquor" in context  # the sorted essays start with addiction.txt


def test_depths_are_rulers_40_points():
    assert len(DEPTHS) == 40 and DEPTHS[0] == 0 and DEPTHS[-1] == 100
    assert DEPTHS[1] == 3 and DEPTHS[20] == 51  # round(100/39), round(2000/39)
    assert DEPTHS == sorted(set(DEPTHS))


def test_insert_into_sentences_cuts_at_depth_shares():
    sentences = tuple(f"S{i}." for i in range(10))
    assert (
        insert_into_sentences(sentences, ["N1", "N2"], [0, 50])
        == " N1 S0. S1. S2. S3. S4. N2 S5. S6. S7. S8. S9."
    )
    assert insert_into_sentences(sentences, ["N"], [100]).endswith("S9. N ")
    assert insert_into_sentences(sentences, ["N"], [33]) == "S0. S1. S2. N S3. S4. S5. S6. S7. S8. S9."


def test_insert_into_lines_reports_line_depths():
    rng = random.Random(0)
    context, depths = insert_into_lines(["x"] * 20, ["N"], rng)
    lines = context.split("\n")
    assert len(lines) == 21
    assert depths == [100.0 * lines.index("N") / 20]


@pytest.mark.parametrize("task", ["niah_single_2", "niah_multivalue"])
def test_essay_needles_follow_the_sentence_share_of_their_depth(niah_samples, task):
    for s in niah_samples[task]:
        context = s.prompt.split("\n")[1]
        sentences = essay_sentences(s.meta["haystack_size"])
        needles = s.meta["needles"]
        offsets = [context.index(n) for n in needles]
        assert offsets == sorted(offsets)
        for offset, depth in zip(offsets, s.meta["depths"], strict=True):
            assert depth in DEPTHS
            before = context[:offset]
            for other in needles:
                before = before.replace(other, "")
            expected = sentences[: int(len(sentences) * depth / 100)]
            assert before.split() == " ".join(expected).split()


def test_noise_needle_depth_matches_its_line(niah_samples):
    for s in niah_samples["niah_single_1"]:
        lines = s.prompt.split("\n")[1:-1]
        index = lines.index(s.meta["needles"][0])
        assert s.meta["depths"] == [pytest.approx(100.0 * index / (len(lines) - 1))]


def test_query_text():
    assert query_text(["a"]) == "a"
    assert query_text(["a", "b", "c", "d"]) == "a, b, c, and d"


def test_generation_is_deterministic_per_seed(smollm2_tokenizer, niah_samples):
    again = generate(smollm2_tokenizer, "niah_multikey_1")
    assert again == niah_samples["niah_multikey_1"]
    other = generate(smollm2_tokenizer, "niah_multikey_1", seed=7)
    assert [s.references for s in other] != [s.references for s in again]
    # Sample i does not depend on how many samples are made.
    assert generate(smollm2_tokenizer, "niah_multikey_1", n=2) == again[:2]


def test_an_overflowing_sample_shrinks_to_the_largest_fitting_size(niah_samples, smollm2_tokenizer):
    counter = TokenCounter(smollm2_tokenizer, chat=True)
    gen = make_generator("niah_single_3", LENGTH, 42, counter)
    fit_size = niah_samples["niah_single_3"][0].meta["fit_size"]
    for index in range(2):
        rng = lambda index=index: sample_rng(42, "niah_single_3", LENGTH, index)  # noqa: E731
        draft = gen.fit_sample(fit_size + 700, counter, rng, index)  # 700 words too many: must shrink
        size = draft.meta["haystack_size"]
        assert size < fit_size + 700 and draft.meta["length_tokens"] <= LENGTH
        assert (
            gen.total_tokens(gen.draft(size + 1, rng(), index), counter) > LENGTH
        )  # one more word overflows
