"""Needle-in-a-Haystack in the KV-compression lineage (FranxYao -> PyramidKV -> LAVa); docs/niah.md."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.benchmarks.base import Benchmark, PromptContext, Sample, question_offset, text_after
from eval.benchmarks.haystack import paul_graham_essays
from eval.heatmap import niah_heatmap
from eval.metrics.niah import NEEDLE_ANSWER, exact_match, rouge1_f, unigram_recall
from lava.errors import UserError

# gkamradt/LLMTest_NeedleInAHaystack default needle, as used by PyramidKV/KVCache-Factory and LAVa.
NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"
# PyramidKV `run_needle_in_haystack.py` / LAVa retrieval question.
QUESTION = "The best thing to do in San Francisco is: "
# PyramidKV / LAVa prompt (plain string, no chat template), `generate_prompt` in run_needle_in_haystack.py.
PROMPT_TEMPLATE = (
    "<|im_start|> This is a very long story book: <book> {context} </book>.\n"
    " Based on the content of the book, Question: {question}\nAnswer:"
)
# Question-agnostic split (docs/question.md): the context part ends with the book's closing tag, the
# question part is the rest: "\n Based on the content of the book, Question: ...\nAnswer:".
CONTEXT_END = "</book>."


@dataclass
class NeedleHaystack(Benchmark):
    """Single-needle retrieval over a context-length x depth grid.

    Parameters
    ----------
    lengths : list[int]
        Context lengths in tokens (haystack + needle, before the buffer is subtracted).
    depths : list[float]
        Needle depths in percent; 100 appends the needle at the end.
    buffer : int
        Tokens subtracted from each length for the prompt around the context (upstream: 200).
    max_new_tokens : int
        Upstream: 30.
    min_new_tokens : int
        Steps on which stop tokens are suppressed. Upstream: 0 (a newline as the first token ends
        the answer, empty).
    period_ids : list[int], optional
        Token ids the insertion point may follow. None derives them from the tokenizer's vocabulary
        (:func:`period_token_ids`); a list reproduces a hard-coded upstream list exactly.
    version : int
        Part of the run identity; bumped when prompts or scoring change (2: LAVa's period rule in
        the score, vocabulary-derived period ids, no minimum answer length).
    """

    name: str = "niah"
    lengths: list[int] = field(default_factory=lambda: [1000, 1500, 2000, 2500, 3000])
    depths: list[float] = field(default_factory=lambda: [0, 25, 50, 75, 100])
    buffer: int = 200
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    needle: str = NEEDLE
    question: str = QUESTION
    train_length: int | None = None
    period_ids: list[int] | None = None
    version: int = 2

    def __post_init__(self) -> None:
        self.lengths = [int(x) for x in self.lengths]
        self.depths = [float(d) for d in self.depths]
        if not self.lengths or min(self.lengths) <= self.buffer:
            raise UserError(f"bench.lengths must all exceed bench.buffer={self.buffer}; got {self.lengths}")
        if not self.depths or any(not 0 <= d <= 100 for d in self.depths):
            raise UserError(f"bench.depths must be depths in [0, 100], at least one; got {self.depths}")
        if (
            not isinstance(self.max_new_tokens, int)
            or isinstance(self.max_new_tokens, bool)
            or self.max_new_tokens < 1
        ):
            raise UserError(
                f"bench.max_new_tokens={self.max_new_tokens!r} is invalid; give a positive integer"
            )
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise UserError(
                f"bench.min_new_tokens={self.min_new_tokens} must lie in [0, bench.max_new_tokens={self.max_new_tokens}]"
            )

    def requested_prompt_tokens(self, ctx: PromptContext) -> int:
        """Tokens of the longest prompt the grid asks for: the longest context plus the prompt frame.

        Computed from the config and the tokenizer alone (no haystack is built). The real prompt
        can differ by a token or two where the context meets the frame.
        """
        frame = PROMPT_TEMPLATE.format(context="", question=self.question)
        return max(self.lengths) - self.buffer + len(ctx.tokenizer.encode(frame, add_special_tokens=True))

    def samples(self, ctx: PromptContext) -> Iterator[Sample]:
        tok = ctx.tokenizer
        needle_ids = tok.encode(self.needle, add_special_tokens=False)  # no BOS inside the context
        haystack_ids = _haystack_ids(tok, max(self.lengths))
        period_ids = set(self.period_ids) if self.period_ids is not None else period_token_ids(tok)
        for length in self.lengths:
            for depth in self.depths:
                context = insert_needle(haystack_ids, needle_ids, length - self.buffer, depth, period_ids)
                text = tok.decode(context, skip_special_tokens=False)
                prompt = PROMPT_TEMPLATE.format(context=text, question=self.question)
                question = text_after(PROMPT_TEMPLATE, CONTEXT_END, {"question": self.question})
                yield Sample(
                    id=f"niah_L{length}_D{depth:g}",
                    task="niah",
                    prompt=prompt,
                    references=[self.needle.strip()],
                    max_new_tokens=self.max_new_tokens,
                    chat=False,
                    stop_newline=True,
                    meta={"length": length, "depth": depth},
                    question_start=question_offset(prompt, question),
                )

    def headline_metric(self) -> str:
        return "recall"

    def score(self, record: dict[str, Any]) -> dict[str, float]:
        response = record["prediction"].strip()
        needle = record["references"][0]
        return {
            "recall": unigram_recall(response, NEEDLE_ANSWER),
            "rouge1_f": rouge1_f(response, needle),
            "exact_match": exact_match(response, NEEDLE_ANSWER),
        }

    def write_artifacts(self, run_dir: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
        if not records:
            return []
        df = pd.DataFrame(
            [{"length": r["meta"]["length"], "depth": r["meta"]["depth"], **r["scores"]} for r in records]
        )
        path = niah_heatmap(
            df, run_dir / "heatmap.png", value="recall", title=run_dir.name, train_length=self.train_length
        )
        return [path]


# Vocabulary spellings of a leading space: SentencePiece's word start, byte-level BPE's mapped space
# byte, and a plain space (tiktoken-style vocabularies with bytes keys).
SPACE_MARKERS = ("\u2581", "\u0120", " ")


def period_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the vocabulary tokens that are a period, alone or after one leading-space marker.

    Upstream hard-codes these per tokenizer family (LLaMA-2 ``[29889, 869]``, LLaMA-3 ``[13]``,
    Mistral ``[842, 28723]``, GLM ``[918, 30930]``) because a SentencePiece tokenizer has two period
    tokens and ``encode(".")`` returns only the word-start one ("▁."), while a sentence end inside
    text is the other ("."). Reading both off the vocabulary works for any tokenizer. Falls back to
    upstream's ``encode(".")`` when the vocabulary has no such token.
    """
    ids = set()
    for token, index in tokenizer.get_vocab().items():
        text = token.decode("utf-8", errors="replace") if isinstance(token, bytes) else token
        if text == "." or (len(text) == 2 and text[0] in SPACE_MARKERS and text[1] == "."):
            ids.add(int(index))
    return ids or set(tokenizer.encode(".", add_special_tokens=False))


def _haystack_ids(tokenizer: Any, min_tokens: int) -> list[int]:
    """Token ids of the essays, repeated until at least ``min_tokens`` long."""
    text = paul_graham_essays()
    ids = tokenizer.encode(text, add_special_tokens=False)
    reps = -(-min_tokens // len(ids))
    return ids * max(1, reps)


def insert_needle(
    haystack: Sequence[int], needle: Sequence[int], length: int, depth: float, period_ids: set[int]
) -> list[int]:
    """Place ``needle`` into the first ``length - len(needle)`` haystack tokens at ``depth`` percent.

    The insertion point moves back to just after the nearest preceding period token, so the needle
    starts a sentence (gkamradt / PyramidKV rule). Depth 100 appends the needle. The result has
    exactly ``length`` tokens when the haystack is long enough.
    """
    context = list(haystack[: max(0, length - len(needle))])
    if depth >= 100:
        return context + list(needle)
    point = int(len(context) * depth / 100)
    while point > 0 and context[point - 1] not in period_ids:
        point -= 1
    return context[:point] + list(needle) + context[point:]
