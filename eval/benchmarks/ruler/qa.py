"""RULER QA (qa_1 = SQuAD, qa_2 = HotpotQA): answer a question from documents hidden among distractors.

Construction follows RULER ``scripts/data/synthetic/qa.py`` (docs/ruler.md, "How samples are made"): sample i
asks question i; its gold documents come first, then same-article distractors (SQuAD), then random
documents; the list is shuffled with a fixed-seed ``Random(seed)`` and written as numbered documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from eval.benchmarks.base import question_offset, text_after
from eval.benchmarks.ruler.fit import Draft, SizedGenerator
from eval.benchmarks.ruler.qa_data import QAPair
from eval.benchmarks.ruler.templates import DOCUMENT_PROMPT, TEMPLATES
from lava.errors import UserError


def choose_documents(pair: QAPair, num_docs: int, num_total: int, rng: random.Random) -> list[int]:
    """Indices of the ``num_docs`` documents of one sample, gold first (RULER ``generate_input_output``)."""
    gold, more = list(pair.context), list(pair.more_context)
    if num_docs >= num_total:  # upstream repeats the whole corpus as needed
        return [i % num_total for i in range(num_docs)]
    if num_docs - len(gold) > len(more):
        taken = set(gold) | set(more)
        others = [i for i in range(num_total) if i not in taken]
        return gold + more + rng.sample(others, max(0, num_docs - len(gold) - len(more)))
    return gold + rng.sample(more, num_docs - len(gold))


@dataclass
class QAGenerator(SizedGenerator):
    """A QA task over loaded pairs and documents. Size unit: documents in the context.

    Parameters
    ----------
    length : int
        Target length in tokens, generation included.
    seed : int
        Run seed (the fixed-seed document shuffle uses it).
    pairs : list[QAPair]
        Questions in file order; sample i asks ``pairs[i]``.
    documents : list[str]
        The sorted unique documents the pairs point into.
    """

    length: int
    seed: int
    pairs: list[QAPair] = field(repr=False, default_factory=list)
    documents: list[str] = field(repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self.tokens_to_generate = TEMPLATES["qa"].tokens_to_generate

    def increment(self) -> int:
        return 10

    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        if index >= len(self.pairs):
            raise UserError(
                f"bench.num_samples={index + 1} exceeds the {len(self.pairs)} questions of the QA data"
            )
        pair = self.pairs[index]
        chosen = choose_documents(pair, size, len(self.documents), rng)
        docs = [self.documents[i] for i in chosen]
        # Upstream quirk kept: a fresh fixed-seed RNG, so the gold document lands at the same slot for a size.
        random.Random(self.seed).shuffle(docs)
        context = "\n\n".join(DOCUMENT_PROMPT.format(i=i + 1, document=d) for i, d in enumerate(docs))
        task = TEMPLATES["qa"]
        prompt = task.template.format(context=context, query=pair.query)
        # Question part: what follows the documents, RULER's repeated instruction and the question
        # ("\n\nAnswer the question based on the given documents. ...\n\nQuestion: <query>"); the
        # instruction's first copy, before the documents, stays in the context part.
        question = text_after(task.template, "{context}", {"query": pair.query})
        return Draft(
            prompt=prompt,
            answer_prefix=task.answer_prefix,
            references=list(pair.outputs),
            meta={"num_gold": len(pair.context)},
            question_start=question_offset(prompt, question),
        )
