"""RULER vt, cwe and fwe generators with the embedded model's tokenizer: chains, counts, lengths."""

import math
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from eval.benchmarks.base import PromptContext
from eval.benchmarks.ruler import Ruler
from eval.benchmarks.ruler.common_words import CommonWordsGenerator
from eval.benchmarks.ruler.fit import TokenCounter
from eval.benchmarks.ruler.freq_words import FreqWordsGenerator, zeta, zipf_counts
from eval.benchmarks.ruler.templates import NOISE
from eval.benchmarks.ruler.variable_tracking import VariableTrackingGenerator
from eval.sample_loop import build_prompt_ids
from lava.errors import UserError
from lava.models import as_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = as_spec(yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text()))
LENGTH = 1024
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
CWE_INTRO = "Memorize the ones that appear most often.\n"


def generate(tokenizer, task, length=LENGTH, n=3, seed=42):
    bench = Ruler(tasks=[task], lengths=[length], num_samples=n, cache=False)
    ctx = PromptContext(tokenizer=tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500, seed=seed)
    return list(bench.samples(ctx))


@pytest.fixture(scope="module")
def samples(smollm2_tokenizer):
    return {task: generate(smollm2_tokenizer, task) for task in ("vt", "cwe", "fwe")}


def assignments(text):
    """Variables holding each value, resolved through the ``VAR X = ...`` lines of a text."""
    value_of = {}
    for name, rhs in re.findall(r"^VAR ([A-Z]+) = (.+?) ?$", text, flags=re.M):
        value_of[name] = rhs
    resolved = {}
    for name in value_of:
        seen, rhs = set(), value_of[name]
        while rhs.startswith("VAR ") and rhs[4:] not in seen:
            seen.add(rhs[4:])
            rhs = value_of.get(rhs[4:], rhs)
        resolved[name] = rhs
    return resolved


@pytest.mark.parametrize("task,budget", [("vt", 30), ("cwe", 120), ("fwe", 50)])
def test_prompt_plus_generation_fits_and_fills_the_length(samples, smollm2_tokenizer, task, budget):
    for s in samples[task]:
        total = len(build_prompt_ids(s, smollm2_tokenizer, SPEC)) + s.max_new_tokens
        assert s.max_new_tokens == budget
        assert total == s.meta["length_tokens"]
        assert 0.85 * LENGTH <= total <= LENGTH


def test_vt_chain_resolves_to_the_references(samples):
    for s in samples["vt"]:
        demo, main = s.prompt.split("\n\n" + VT_INTRO)
        query = re.search(r"assigned the value (\d{5}) in the text above\.$", main).group(1)
        assert s.answer_prefix == (
            " Answer: According to the chain(s) of variable assignment in the text above, 5 variables are "
            f"assigned the value {query}, they are: "
        )
        holders = [name for name, value in assignments(main).items() if value == query]
        assert sorted(holders) == sorted(s.references)
        assert len(s.references) == 5 and all(re.fullmatch(r"[A-Z]{5}", v) for v in s.references)
        # The chain's statements keep their order: each hop assigns the previous variable.
        lines = [line for line in main.split("\n") if line.startswith("VAR ")]
        assert lines[0] == f"VAR {s.references[0]} = {query}"
        for prev, name, line in zip(s.references[:-1], s.references[1:], lines[1:], strict=True):
            assert line == f"VAR {name} = VAR {prev} "
        filler = [line for line in main.split("\n")[2:-1] if not line.startswith("VAR ")]
        assert filler and set(filler) == {NOISE}


def test_vt_demo_is_a_solved_example_with_fresh_names(samples, smollm2_tokenizer):
    demos = []
    for s in samples["vt"]:
        demo = s.prompt.split("\n\n" + VT_INTRO)[0]
        assert demo.startswith(VT_INTRO)
        body, answer = demo.rsplit(" they are:  ", 1)
        value = re.search(r"assigned the value (\d{5}), 5 variables", demo) or re.search(
            r"5 variables are assigned the value (\d{5})", demo
        )
        names = answer.split()
        assert len(names) == 5 and all(re.fullmatch(r"[A-Z]{3}", n) for n in names)
        holders = [n for n, v in assignments(body).items() if v == value.group(1)]
        assert sorted(holders) == sorted(names)
        assert "12345" not in demo
        demos.append(names)
    assert demos[0] != demos[1]  # renamed per sample
    # The underlying demo is fitted to RULER's 500-token budget (bare text, no template).
    counter = TokenCounter(smollm2_tokenizer, chat=True)
    base = VariableTrackingGenerator(LENGTH, 42, counter).demo()
    assert "= 12345\n" in base
    assert 400 < counter.plain(base.rsplit(" they are: ", 1)[0] + " they are: ") <= 500


def test_vt_that_cannot_fit_is_a_user_error(smollm2_tokenizer):
    with pytest.raises(UserError, match="larger bench.lengths"):
        generate(smollm2_tokenizer, "vt", length=512, n=1)


def parse_numbered(text):
    items = re.findall(r"(\d+)\. (\S+)", text)
    assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
    return [w for _, w in items]


def test_cwe_counts(samples):
    for s in samples["cwe"]:
        shot, main = s.prompt.split("\n" + "Below is a numbered list")
        main_list = main.split(CWE_INTRO, 1)[1].split("\nQuestion: ")[0]
        counts = Counter(parse_numbered(main_list))
        assert len(s.references) == 10
        assert all(counts[w] == 6 for w in s.references)  # below 4096 tokens: common x6, others x1
        assert all(c == 1 for w, c in counts.items() if w not in s.references)
        assert len(counts) == s.meta["haystack_size"]
        shot_list, shot_answer = shot.split(CWE_INTRO, 1)[1].split(
            "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear "
            "most often in the list are: "
        )
        shot_counts = Counter(parse_numbered(shot_list))
        assert len(shot_counts) == 20
        assert sorted(parse_numbered(shot_answer)) == sorted(w for w, c in shot_counts.items() if c == 3)
        assert all(c == 1 for c in shot_counts.values() if c != 3)
    assert s.answer_prefix == " Answer: The top 10 words that appear most often in the list are:"


def test_cwe_long_settings_and_example_counts():
    gen = CommonWordsGenerator(length=4096, seed=42)
    assert gen.repeats() == ((40, 10, 3), (30, 3))
    assert CommonWordsGenerator(length=4095, seed=42).repeats() == ((20, 3, 1), (6, 1))
    text, common = gen.example(25, 30, 3, random.Random(1))
    counts = Counter(parse_numbered(text))
    assert len(counts) == 25 and sorted(w for w, c in counts.items() if c == 30) == sorted(common)
    assert sum(counts.values()) == 10 * 30 + 15 * 3
    assert len(gen.vocabulary) == 8166  # wonderwords 3.0.1: unique nouns + adjectives + verbs


def test_cwe_beyond_the_word_list_is_a_user_error(smollm2_tokenizer):
    gen = CommonWordsGenerator(length=LENGTH, seed=42)
    gen.vocabulary = gen.vocabulary[:40]  # the whole list fits in 1024 tokens
    counter = TokenCounter(smollm2_tokenizer, chat=True)
    with pytest.raises(UserError, match="drop cwe"):
        gen.find_size(counter, lambda: random.Random(0))


def test_fwe_counts_follow_zipf_and_answers_are_ranks_2_to_4(samples):
    for s in samples["fwe"]:
        text = s.prompt.split("three most frequently appeared coded words. ", 1)[1].split("\nQuestion: ")[0]
        counts = Counter(text.split(" "))
        ranked = [w for w, _ in counts.most_common()]
        assert ranked[0] == "..."
        assert s.references == ranked[1:4]
        assert counts[ranked[1]] > counts[ranked[2]] > counts[ranked[3]] > counts[ranked[4]]
        num_words = s.meta["haystack_size"]
        expected = zipf_counts(num_words, len(counts), 2.0)
        assert sorted(counts.values(), reverse=True) == [c for c in expected if c > 0]
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:])
        assert len(set(counts)) <= (LENGTH - 50) // 50


def test_zeta_and_zipf_counts():
    assert zeta(2.0) == pytest.approx(math.pi**2 / 6, rel=1e-15)
    assert zeta(4.0) == pytest.approx(math.pi**4 / 90, rel=1e-15)
    assert zeta(3.0) == pytest.approx(1.2020569031595942, rel=1e-15)
    # 1000 / (pi^2/6) = 607.93; / 4 = 151.98; / 9 = 67.55; / 16 = 37.995; / 25 = 24.32
    assert zipf_counts(1000, 5, 2.0) == [607, 151, 67, 37, 24]
    with pytest.raises(ValueError):
        zeta(1.0)


def test_fwe_vocabulary_is_rulers(smollm2_tokenizer):
    gen = FreqWordsGenerator(length=2048, seed=42)
    assert gen.vocab_size == (2048 - 50) // 50 and gen.increment() == (2048 - 50) // 32
    vocab = gen.vocabulary(random.Random(3))
    assert vocab[0] == "..." and len(vocab) == gen.vocab_size == len(set(vocab))


@pytest.mark.parametrize("task", ["vt", "cwe", "fwe"])
def test_deterministic(samples, smollm2_tokenizer, task):
    assert generate(smollm2_tokenizer, task, n=2) == samples[task][:2]
    assert generate(smollm2_tokenizer, task, n=1, seed=1)[0].references != samples[task][0].references
