"""bench=code_completion: LongBench lcc format, the predictable-line rule, deterministic samples, errors."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from eval.benchmarks import code_completion as cc
from eval.benchmarks.base import PromptContext
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]
SNIPPET = '''import os


def helper(path):
    """Return the size.

    Long prose a model cannot guess.
    """
    size = os.path.getsize(path)  # bytes
    label = "size"
    return size
    print(label, size)
    print("never seen before")
    total = compute_total(size)
    x = (
        1)
'''


@pytest.fixture(scope="module")
def ctx(smollm2_tokenizer):
    return PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500)


@pytest.fixture(scope="module")
def samples(ctx):
    return list(cc.CodeCompletion(num_samples=12).samples(ctx))


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if needle in line)


@pytest.mark.parametrize(
    "needle, expected",
    [
        ("size = os.path", False),  # trailing comment
        ("Long prose", False),  # inside a docstring
        ('"""Return', False),  # first line of a multi-line string
        ("return size", True),  # names seen, keyword
        ("print(label, size)", True),  # builtin and seen names
        ('print("never', False),  # unseen string literal
        ("compute_total", False),  # a name the context never mentions
        ("1)", False),  # shorter than min_chars
    ],
)
def test_predictable_line_rule(needle, expected):
    lines = SNIPPET.splitlines(keepends=True)
    info = cc.line_info(SNIPPET)
    index = line_of(SNIPPET, needle)
    assert cc.predictable_line(info, lines, index, 0, min_chars=8) is expected


def test_string_seen_in_context_is_predictable():
    text = 'a = "key"\nb = 1\nprint(a, "key")\n'
    info = cc.line_info(text)
    assert cc.predictable_line(info, text.splitlines(keepends=True), 2, 0, min_chars=8)
    assert not cc.predictable_line(
        info, text.splitlines(keepends=True), 2, 1, min_chars=8
    )  # "a" and "key" cut off


def test_lcc_format_is_longbench_verbatim():
    data = REPO / "configs" / "bench" / "longbench_data"
    prompts = json.loads((data / "dataset2prompt.json").read_text())
    bench = cc.CodeCompletion()
    assert (
        bench.template
        == prompts["lcc"]
        == "Please complete the code given below. \n{context}Next line of code:\n"
    )
    assert bench.max_new_tokens == 64


def test_samples_are_cut_from_the_files_at_line_boundaries(samples, ctx):
    texts = dict(cc.python_sources())
    bench = cc.CodeCompletion()
    head, tail = bench.template.split("{context}")
    assert len(samples) == 12 and len({s.id for s in samples}) == 12
    for s in samples:
        assert not s.chat and s.max_new_tokens == 64 and s.task == "lcc"
        assert s.prompt.startswith(head) and s.prompt.endswith(tail)
        context = s.prompt[len(head) : -len(tail)]
        lines = texts[s.meta["file"]].splitlines(keepends=True)
        stop = s.meta["line"] - 1
        assert "".join(lines[stop - s.meta["context_lines"] : stop]) == context
        assert s.references == [lines[stop].strip()] and s.references[0]
        assert 2048 - 64 <= len(ctx.tokenizer.encode(context)) <= 2048 + 2
        info = cc.line_info(texts[s.meta["file"]])
        assert cc.predictable_line(info, lines, stop, stop - s.meta["context_lines"], 8)


def test_samples_are_deterministic_and_round_robin(samples, ctx):
    again = list(cc.CodeCompletion(num_samples=12).samples(ctx))
    assert [(s.id, s.prompt, s.references) for s in again] == [
        (s.id, s.prompt, s.references) for s in samples
    ]
    files = [s.meta["file"] for s in samples]
    assert len(set(files)) == len(files)  # first cut of each file before any second cut
    assert files == sorted(files)


def test_keep_last_tokens_keeps_the_samples_and_shortens_the_context(samples, ctx):
    short = list(cc.CodeCompletion(num_samples=12, keep_last_tokens=128).samples(ctx))
    assert [s.id for s in short] == [s.id for s in samples]
    assert [s.references for s in short] == [s.references for s in samples]
    for s, long in zip(short, samples):
        assert long.prompt.endswith(s.prompt.split("given below. \n", 1)[1])
        assert len(ctx.tokenizer.encode(s.prompt)) <= 128 + 16


def test_score_is_code_sim_of_first_line_without_comment():
    bench = cc.CodeCompletion()
    record = {"prediction": "\n# a comment\nreturn size\nmore", "references": ["return size"]}
    assert bench.score(record) == {"score": 1.0}
    assert bench.score({"prediction": "return siz", "references": ["return size"]})["score"] == pytest.approx(
        0.95
    )
    agg = bench.aggregate(
        [{"task": "lcc", "scores": {"score": 1.0}}, {"task": "lcc", "scores": {"score": 0.5}}]
    )
    assert agg["score"] == 75.0


def test_requested_prompt_tokens_and_length_error(ctx):
    bench = cc.CodeCompletion(lengths=[1024, 2048])
    assert 2048 < bench.requested_prompt_tokens(ctx) < 2048 + 20
    with pytest.raises(UserError, match="max_prompt_tokens"):
        next(iter(cc.CodeCompletion(lengths=[9000]).samples(ctx)))


@pytest.mark.parametrize(
    "bad", [{"lengths": []}, {"num_samples": 0}, {"keep_last_tokens": 0}, {"min_line_chars": "x"}]
)
def test_bad_settings_are_one_line_errors(bad):
    with pytest.raises(UserError):
        cc.CodeCompletion(**bad)


def test_missing_or_other_version_of_the_package(monkeypatch):
    cc.python_sources.cache_clear()

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(UserError, match="make setup"):
        cc.python_sources()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1")
    cc.python_sources.cache_clear()
    with pytest.raises(UserError, match="0.22.4"):
        cc.python_sources()
    monkeypatch.undo()
    cc.python_sources.cache_clear()
