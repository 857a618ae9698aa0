"""Offline code completion in the exact task format of LongBench's ``lcc``, built from a pinned package.

The task format is LongBench's (THUDM/LongBench @ 2e00731f): the ``lcc`` prompt of
``config/dataset2prompt.json``, its ``max_new_tokens`` of ``config/dataset2maxlen.json`` (64), no
chat template (``pred.py`` leaves lcc raw), and ``code_sim_score`` of ``metrics.py`` (fuzz.ratio
of the first predicted line without a backtick, ``#`` or ``//``), read from the same files and
functions the ``longbench`` benchmark uses.

The data are the Python files of ``docutils`` (:data:`CODE_PACKAGE`, pinned in the Makefile and
installed with ``--no-deps``): pure Python, long files (22 modules over 20 kB), a stable release.
A sample is one file cut at a line boundary so that the context before the cut has about ``length``
tokens; the reference is the next non-empty line. Lines a model cannot predict from the context
alone are never chosen as references (:func:`predictable_line`).

A sample has no question (``Sample.question_start`` is None): the whole prompt, the template's
closing cue "Next line of code:" included, is context, so the question part of the
question-agnostic setting is empty and the two settings (docs/question.md) compute the same thing.
The cue is the same for every sample and asks nothing the code does not already say. (LongBench's
own ``lcc`` task in ``bench=longbench`` follows that benchmark's rule instead: its question part is
the cue after the context.)
"""

from __future__ import annotations

import bisect
import builtins
import functools
import importlib.metadata
import io
import keyword
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from eval.benchmarks.base import Benchmark, PromptContext, Sample, default_aggregate
from eval.benchmarks.longbench_tasks import max_new_tokens, prompt_templates
from eval.metrics.longbench import score_prediction, task_score
from lava.errors import UserError

CODE_PACKAGE = "docutils"
CODE_VERSION = "0.22.4"
LCC_TASK = "lcc"
# Names every reader of Python knows without context: keywords and builtins.
KNOWN_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))


def _missing_package() -> UserError:
    return UserError(
        f"the code corpus is missing: run `make setup` (or `pip install --no-deps {CODE_PACKAGE}=={CODE_VERSION}`)"
    )


@functools.cache
def python_sources() -> tuple[tuple[str, str], ...]:
    """``(path, text)`` of every ``.py`` file of the pinned package, sorted by path.

    The package is found through ``importlib.metadata`` (it is installed with ``--no-deps``); another
    version than :data:`CODE_VERSION` would give other samples, so it is refused.
    """
    try:
        version = importlib.metadata.version(CODE_PACKAGE)
        files = importlib.metadata.files(CODE_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise _missing_package() from None
    if version != CODE_VERSION:
        raise UserError(
            f"{CODE_PACKAGE} {version} is installed but the code samples are defined on {CODE_VERSION}; "
            f"run `pip install --no-deps {CODE_PACKAGE}=={CODE_VERSION}`"
        )
    paths = sorted(str(f) for f in files if str(f).endswith(".py"))
    if not paths:
        raise _missing_package()
    located = {str(f): Path(f.locate()) for f in files}
    return tuple((p, located[p].read_text(encoding="utf-8")) for p in paths)


@dataclass
class LineInfo:
    """What :func:`predictable_line` needs about each line of a file (0-based line numbers).

    Attributes
    ----------
    code : list of bool
        The line holds code: something other than whitespace, is not (part of) a string spanning
        several lines, and has no comment.
    names : list of set of str
        NAME tokens starting on the line.
    strings : list of list of str
        String literals starting on the line.
    """

    code: list[bool]
    names: list[set[str]]
    strings: list[list[str]]


def line_info(text: str) -> LineInfo | None:
    """Tokenize ``text`` with Python's tokenizer; None when it is not valid Python."""
    lines = text.splitlines(keepends=True)
    n = len(lines)
    has_code = [False] * n
    excluded = [False] * n
    names: list[set[str]] = [set() for _ in range(n)]
    strings: list[list[str]] = [[] for _ in range(n)]
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    for tok in tokens:
        row, end_row = tok.start[0] - 1, tok.end[0] - 1
        if tok.type in skip or row >= n:
            continue
        if tok.type == tokenize.COMMENT:
            excluded[row] = True
            continue
        if end_row > row:  # a string (or f-string) over several lines: its lines are prose
            for r in range(row, min(end_row, n - 1) + 1):
                excluded[r] = True
        has_code[row] = True
        if tok.type == tokenize.NAME:
            names[row].add(tok.string)
        elif tok.type == tokenize.STRING:
            strings[row].append(tok.string)
    code = [c and not e for c, e in zip(has_code, excluded)]
    return LineInfo(code=code, names=names, strings=strings)


def predictable_line(info: LineInfo, lines: Sequence[str], index: int, start: int, min_chars: int) -> bool:
    """Whether line ``index`` is a fair reference given the context ``lines[start:index]``.

    The rule (documented in docs/code_completion.md): the line is code (no comment, not inside a
    docstring or another multi-line string), has at least ``min_chars`` non-blank characters (a lone
    ``)`` or ``else:`` says nothing about the context), every name in it is a keyword, a builtin or
    a name that occurs in the context, and every string literal in it occurs verbatim in the
    context. A new identifier or message cannot be guessed from the context alone.
    """
    if not info.code[index] or len("".join(lines[index].split())) < min_chars:
        return False
    seen_names: set[str] = set().union(*info.names[start:index]) if index > start else set()
    if any(name not in KNOWN_NAMES and name not in seen_names for name in info.names[index]):
        return False
    context = "".join(lines[start:index])
    return all(s in context for s in info.strings[index])


@dataclass
class CodeCut:
    """One sample: ``lines[start:stop]`` of a file is the context, ``lines[stop]`` the reference."""

    path: str
    start: int
    stop: int
    context_tokens: int


def file_cuts(
    path: str, text: str, tokenizer: Any, length: int, max_cuts: int, min_chars: int
) -> list[CodeCut]:
    """Up to ``max_cuts`` cuts of one file with about ``length`` context tokens each, in file order.

    Cut ``k`` is at the first predictable line whose prefix (from the file start) has at least
    ``(k + 1) * length`` tokens; its context starts at the first line boundary within ``length``
    tokens of the cut, so the contexts of one file do not overlap and the first starts near the top.
    Token counts come from one tokenization of the whole file (offsets of each token).
    """
    lines = text.splitlines(keepends=True)
    info = line_info(text)
    if info is None or not lines:
        return []
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    token_starts = [s for s, _ in encoded["offset_mapping"]]
    line_chars = [0]
    for line in lines:
        line_chars.append(line_chars[-1] + len(line))
    before = [bisect.bisect_left(token_starts, c) for c in line_chars]  # tokens before each line
    cuts: list[CodeCut] = []
    index = 0
    while len(cuts) < max_cuts:
        target = (len(cuts) + 1) * length
        index = bisect.bisect_left(before, target, lo=index)
        found = None
        for stop in range(index, len(lines)):
            start = bisect.bisect_left(before, before[stop] - length)
            if lines[stop].strip() and predictable_line(info, lines, stop, start, min_chars):
                found = CodeCut(path, start, stop, before[stop] - before[start])
                break
        if found is None:
            break
        cuts.append(found)
        index = found.stop + 1
    return cuts


def next_nonempty(lines: Sequence[str], index: int) -> int:
    """Index of the first non-blank line at or after ``index``."""
    while index < len(lines) and not lines[index].strip():
        index += 1
    return index


@dataclass
class CodeCompletion(Benchmark):
    """LongBench ``lcc``-format next-line completion on the pinned package's Python files.

    Parameters
    ----------
    lengths : list of int
        Context lengths in tokens (the code before the cut; the prompt adds the template's ~12).
    num_samples : int
        Samples per length, taken round-robin over the files (first cut of every file, then the
        second, ...) in path order.
    max_cuts_per_file : int
        At most this many non-overlapping contexts from one file.
    min_line_chars : int
        Shortest reference line (non-blank characters).
    keep_last_tokens : int, optional
        Keep only the last lines of each sample's context within this many tokens (the same
        samples and references, a shorter context): does the long context help?
    version : int
        Part of the run identity; bumped when prompts, sample choice or scoring change.
    """

    name: str = "code_completion"
    lengths: list[int] = field(default_factory=lambda: [2048])
    num_samples: int = 40
    max_cuts_per_file: int = 8
    min_line_chars: int = 8
    keep_last_tokens: int | None = None
    min_new_tokens: int = 1
    version: int = 1

    unit: ClassVar[str] = "percent"  # the headline is LongBench's round(100 * mean, 2)

    def __post_init__(self) -> None:
        self.lengths = [int(x) for x in self.lengths]
        if not self.lengths or min(self.lengths) < 16:
            raise UserError(f"bench.lengths={self.lengths} is invalid; give token lengths >= 16")
        for option in ("num_samples", "max_cuts_per_file", "min_line_chars"):
            value = getattr(self, option)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"bench.{option}={value} is invalid; give a positive integer")
        keep = self.keep_last_tokens
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise UserError(f"bench.keep_last_tokens={keep} is invalid; give a positive integer or null")
        self.template = prompt_templates()[LCC_TASK]
        self.max_new_tokens = max_new_tokens()[LCC_TASK]

    def requested_prompt_tokens(self, ctx: PromptContext) -> int:
        """Longest prompt: the longest context plus the template (and one token of boundary slack)."""
        overhead = len(ctx.tokenizer.encode(self.template.format(context=""), add_special_tokens=True))
        return max(self.lengths) + overhead + 1

    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        ctx.refuse_beyond_prompt_cap(
            self.requested_prompt_tokens(ctx), f"bench.lengths up to {max(self.lengths)}"
        )
        sources = python_sources()
        tok = ctx.tokenizer
        for length in self.lengths:
            per_file = [
                file_cuts(path, text, tok, length, self.max_cuts_per_file, self.min_line_chars)
                for path, text in sources
            ]
            order = [cuts[k] for k in range(self.max_cuts_per_file) for cuts in per_file if k < len(cuts)]
            if not order:
                raise UserError(f"no {CODE_PACKAGE} file has {length} tokens of context; use shorter lengths")
            texts = dict(sources)
            for cut in order[: self.num_samples]:
                yield self._sample(cut, texts[cut.path], tok, length)

    def _sample(self, cut: CodeCut, text: str, tokenizer: Any, length: int) -> Sample:
        lines = text.splitlines(keepends=True)
        start = cut.start
        if self.keep_last_tokens is not None:
            start = _last_lines_within(lines[cut.start : cut.stop], tokenizer, self.keep_last_tokens) + start
        context = "".join(lines[start : cut.stop])
        return Sample(
            id=f"{LCC_TASK}/{cut.path}:{cut.stop + 1}/L{length}",
            task=LCC_TASK,
            prompt=self.template.format(context=context),
            references=[lines[cut.stop].strip()],  # LCC's ground truths are stripped lines
            max_new_tokens=self.max_new_tokens,
            chat=False,  # LongBench pred.py: lcc is asked without the chat template
            question_start=None,  # no question: agnostic == aware (module docstring)
            meta={
                "length": length,
                "file": cut.path,
                "line": cut.stop + 1,
                "context_lines": cut.stop - start,
            },
        )

    def score(self, record: dict[str, Any]) -> dict[str, float]:
        """``{"score": s}``: LongBench's code_sim_score in [0, 1] (tables show 100 x the mean)."""
        return {"score": float(score_prediction(LCC_TASK, record["prediction"], record["references"]))}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Means as usual, but the headline ``score`` on LongBench's scale: ``round(100 * mean, 2)``."""
        out = default_aggregate(records, self.headline_metric())
        out["score"] = task_score([r["scores"]["score"] for r in records])
        # Per task on the same scale as the headline (the tables bootstrap the samples to match it).
        for task, entry in out["per_task"].items():
            entry["score"] = task_score([r["scores"]["score"] for r in records if r["task"] == task])
        out["score_scale"] = "0-100 (LongBench task score)"
        return out


def _last_lines_within(lines: Sequence[str], tokenizer: Any, max_tokens: int) -> int:
    """Index of the first of the last lines of ``lines`` whose text fits in ``max_tokens`` tokens."""
    total = 0
    for i in range(len(lines) - 1, -1, -1):
        total += len(tokenizer.encode(lines[i], add_special_tokens=False))
        if total > max_tokens:
            return i + 1
    return 0
