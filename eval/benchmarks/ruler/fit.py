"""Fitting a sample to its target length with the model's own tokenizer (RULER prepare.py and generators).

RULER counts the tokens of the whole model input, model template and answer prefix included, and
requires ``input tokens + tokens_to_generate <= max_seq_length``. It binary-searches the haystack
size (in the task's own unit: essay words, noise lines, documents, list words) on one probe sample,
then shrinks each sample by one increment until it fits. :class:`SizedGenerator` implements that
procedure once for every task family; a family only says how to draft a sample of a given size.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lava.errors import UserError


@dataclass
class Draft:
    """A generated sample before it becomes a :class:`~eval.benchmarks.base.Sample`.

    Attributes
    ----------
    prompt : str
        User text (RULER's ``input``).
    answer_prefix : str
        Text after the chat template (RULER's ``answer_prefix``).
    references : list[str]
        Gold answers (RULER's ``outputs``).
    meta : dict
        Family-specific facts (needle depths, counts) kept for tables and tests.
    question_start : int or None
        Offset into ``prompt`` where the question part begins
        (:attr:`eval.benchmarks.base.Sample.question_start`): right after the task template's
        ``{context}`` field, so the question part is the template's text after the haystack.
    """

    prompt: str
    answer_prefix: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    question_start: int | None = None


class TokenCounter:
    """Counts the tokens of a prompt exactly as the runner will feed it to the model.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerBase
        The model's tokenizer.
    chat : bool
        Wrap the prompt with the tokenizer's chat template (``add_generation_prompt=True``) before
        appending the answer prefix, as the runner does for chat samples.
    """

    def __init__(self, tokenizer: Any, chat: bool) -> None:
        self.tokenizer = tokenizer
        self.chat = chat

    def render(self, prompt: str, answer_prefix: str) -> str:
        """The full model input text: (chat-wrapped) prompt followed by the answer prefix."""
        if self.chat:
            wrapped = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return wrapped + answer_prefix
        return prompt + answer_prefix

    def __call__(self, prompt: str, answer_prefix: str = "") -> int:
        # A chat template writes its own special tokens (BOS included) into the text.
        return len(
            self.tokenizer.encode(self.render(prompt, answer_prefix), add_special_tokens=not self.chat)
        )

    def plain(self, text: str) -> int:
        """Tokens of a bare text fragment (no template, no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))


class SizedGenerator(ABC):
    """A RULER task family: drafts samples of a given haystack size and fits them to a length.

    Subclasses set ``length`` (the target, generation included), ``seed`` and
    ``tokens_to_generate``, and implement :meth:`draft` and :meth:`increment`.
    """

    length: int
    seed: int
    tokens_to_generate: int

    @abstractmethod
    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        """Build sample ``index`` with a haystack of ``size`` units, drawing randomness from ``rng``."""

    @abstractmethod
    def increment(self) -> int:
        """The unit step of the size search and of the per-sample shrinking."""

    def probe_size(self) -> int:
        """Size of the probe used to estimate tokens per unit (RULER: one increment)."""
        return self.increment()

    def upper_bound(self, tokens_per_unit: float) -> int:
        """Upper end of the binary search (RULER: three times the estimated fitting size)."""
        return max(int(self.length / tokens_per_unit * 3), self.increment() * 2)

    def max_size(self) -> int | None:
        """Largest size the family can build, or None when unbounded."""
        return None

    def total_tokens(self, draft: Draft, count: TokenCounter) -> int:
        """RULER's ``length``: prompt tokens plus the generation budget."""
        return count(draft.prompt, draft.answer_prefix) + self.tokens_to_generate

    def _attempt(self, size: int, rng: random.Random, index: int, count: TokenCounter) -> tuple[Draft, int]:
        draft = self.draft(size, rng, index)
        return draft, self.total_tokens(draft, count)

    def find_size(self, count: TokenCounter, probe_rng: Callable[[], random.Random]) -> int:
        """Largest size whose probe sample fits the length (RULER's binary search).

        ``probe_rng`` returns a freshly seeded generator, so that probes of different sizes differ
        only in size and the search is monotone.
        """

        def fits(size: int) -> bool:
            return self._attempt(size, probe_rng(), 0, count)[1] <= self.length

        unit = self.probe_size()
        probe = self.draft(unit, probe_rng(), 0)
        tokens_per_unit = max(count(probe.prompt, probe.answer_prefix) / unit, 1e-9)
        low, high = self.increment(), self.upper_bound(tokens_per_unit)
        cap = self.max_size()
        if cap is not None:
            high = min(high, cap)
        # The estimate can fall short when fixed text (vt's demo, a few-shot block) inflates the
        # probe: widen the range while its top still fits.
        while (cap is None or high < cap) and fits(high):
            low, high = high, high * 2 if cap is None else min(high * 2, cap)
        best = None
        while low <= high:
            mid = (low + high) // 2
            if fits(mid):
                best, low = mid, mid + 1
            else:
                high = mid - 1
        # RULER falls back to one increment; fit_sample reports when even that does not fit.
        return self.increment() if best is None else best

    def fit_sample(
        self, size: int, count: TokenCounter, rng_factory: Callable[[], random.Random], index: int
    ) -> Draft:
        """Draft sample ``index`` at the largest size up to ``size`` that fits the length.

        RULER retries an overflowing sample one increment smaller (500 words for essays, about a
        quarter of a 2k context). We step down by increments too, then bisect inside the last step,
        so every sample ends within one unit of the target. ``rng_factory`` re-creates the sample's
        generator, so every attempt draws the same needles.
        """
        used = size
        draft, total = self._attempt(used, rng_factory(), index, count)
        while total > self.length:
            if used <= self.increment():
                raise UserError(
                    f"RULER {type(self).__name__} cannot fit in {self.length} tokens (the smallest sample needs "
                    f"{total} including {self.tokens_to_generate} to generate); use larger bench.lengths"
                )
            lower = used - self.increment()
            low_draft, low_total = self._attempt(lower, rng_factory(), index, count)
            if low_total <= self.length:
                good, bad = lower, used
                draft, total = low_draft, low_total
                while bad - good > 1:
                    mid = (good + bad) // 2
                    mid_draft, mid_total = self._attempt(mid, rng_factory(), index, count)
                    if mid_total <= self.length:
                        good, draft, total = mid, mid_draft, mid_total
                    else:
                        bad = mid
                used = good
                break
            used, draft, total = lower, low_draft, low_total
        draft.meta.update(haystack_size=used, length_tokens=total)
        return draft
