"""RULER's prompt templates, needle sentences and haystack filler: the definition of the benchmark.

Every string here is byte-for-byte RULER's; only the names are ours. Sources (NVIDIA/RULER @ c3f5e3b4):

- task templates, answer prefixes, tokens_to_generate: ``scripts/data/synthetic/constants.py``;
- the needle sentence and the noise filler line: ``scripts/data/synthetic/niah.py``
  (the same noise line is in ``variable_tracking.py``);
- the document header of the QA context: ``scripts/data/synthetic/qa.py`` (``DOCUMENT_PROMPT``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskTemplate:
    """One entry of RULER's ``TASKS`` table.

    Attributes
    ----------
    template : str
        User text with ``{context}`` and ``{query}`` (and, for NIAH, ``{type_needle_v}``) fields.
    answer_prefix : str
        Cue placed after the chat template, where the model's answer begins.
    tokens_to_generate : int
        Generation budget, counted inside the target length.
    """

    template: str
    answer_prefix: str
    tokens_to_generate: int


# RULER scripts/data/synthetic/constants.py, TASKS (verbatim strings).
TEMPLATES: dict[str, TaskTemplate] = {
    "niah": TaskTemplate(
        template=(
            "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it."
            " I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
            "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
        ),
        answer_prefix=" The special magic {type_needle_v} for {query} mentioned in the provided text are",
        tokens_to_generate=128,
    ),
    "variable_tracking": TaskTemplate(
        template=(
            "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
            "Question: Find all variables that are assigned the value {query} in the text above."
        ),
        answer_prefix=(
            " Answer: According to the chain(s) of variable assignment in the text above,"
            " {num_v} variables are assigned the value {query}, they are: "
        ),
        tokens_to_generate=30,
    ),
    "common_words_extraction": TaskTemplate(
        template=(
            "Below is a numbered list of words. In these words, some appear more often than others."
            " Memorize the ones that appear most often.\n{context}\n"
            "Question: What are the 10 most common words in the above list?"
        ),
        answer_prefix=" Answer: The top 10 words that appear most often in the list are:",
        tokens_to_generate=120,
    ),
    "freq_words_extraction": TaskTemplate(
        template=(
            "Read the following coded text and track the frequency of each coded word."
            " Find the three most frequently appeared coded words. {context}\n"
            "Question: Do not provide any explanation. Please ignore the dots '....'."
            " What are the three most frequently appeared words in the above coded text?"
        ),
        answer_prefix=" Answer: According to the coded text above, the three most frequently appeared words are:",
        tokens_to_generate=50,
    ),
    "qa": TaskTemplate(
        template=(
            "Answer the question based on the given documents. Only give me the answer and do not output any"
            " other words.\n\nThe following are given documents.\n\n{context}\n\n"
            "Answer the question based on the given documents. Only give me the answer and do not output any"
            " other words.\n\nQuestion: {query}"
        ),
        answer_prefix=" Answer:",
        tokens_to_generate=32,
    ),
}

# RULER scripts/data/synthetic/niah.py: the needle sentence (also the filler line of "needle" haystacks).
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."

# RULER scripts/data/synthetic/niah.py and variable_tracking.py: the "noise" haystack line.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# RULER scripts/data/synthetic/qa.py: how each document is written into the QA context.
DOCUMENT_PROMPT = "Document {i}:\n{document}"

# RULER niah.py: the singular rewrite applied to template + answer prefix when one value is asked for.
SINGULAR_REPLACEMENTS: tuple[tuple[str, str], ...] = (
    ("Some", "A"),
    ("are all", "is"),
    ("are", "is"),
    ("answers", "answer"),
)
