"""RULER variable tracking (vt): follow a chain of ``VAR X = VAR Y`` assignments through noise.

Construction follows RULER ``scripts/data/synthetic/variable_tracking.py`` (docs/ruler.md, "How
samples are made"), including the one in-context demo: generated once per seed for a 500-token budget with
3-letter names and the value 12345, then given fresh names and a fresh value in every sample.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from eval.benchmarks.base import question_offset, text_after
from eval.benchmarks.ruler.fit import Draft, SizedGenerator, TokenCounter
from eval.benchmarks.ruler.templates import NOISE, TEMPLATES

DEMO_LENGTH = 500  # RULER: the demo is fitted to max_seq_length=500 with nothing to generate
DEMO_VALUE = "12345"


def variable_names(rng: random.Random, count: int, letters: int) -> list[str]:
    """``count`` distinct names of ``letters`` random uppercase letters, in drawing order."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        # Distinct by construction: upstream appends extra names on a clash but can still leave a
        # repeated name inside the first chain, which would make the answer ambiguous.
        if name not in names:
            names.append(name)
    return names


def make_chains(
    rng: random.Random, num_chains: int, num_hops: int, letters: int, value: str | None
) -> tuple[list[list[str]], list[list[str]]]:
    """Variable names and assignment statements of each chain.

    The first statement assigns a 5-digit value (``value`` when given) and each later one assigns
    the previous variable, with RULER's trailing space: ``"VAR B = VAR A "``.
    """
    names = variable_names(rng, num_chains * (num_hops + 1), letters)
    all_vars, chains = [], []
    for c in range(num_chains):
        chain_vars = names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)]
        start = value if value is not None else str(rng.randint(10000, 99998))  # numpy randint(10000, 99999)
        statements = [f"VAR {chain_vars[0]} = {start}"]
        statements += [f"VAR {chain_vars[j + 1]} = VAR {chain_vars[j]} " for j in range(num_hops)]
        all_vars.append(chain_vars)
        chains.append(statements)
    return all_vars, chains


def noise_context(num_lines: int, chains: list[list[str]], rng: random.Random) -> str:
    """Noise lines with each chain's statements inserted in order at sorted random positions."""
    lines = [NOISE] * num_lines
    for chain in chains:
        positions = sorted(rng.sample(range(len(lines)), len(chain)))
        for j, position in enumerate(positions):
            lines.insert(position + j, chain[j])
    return "\n".join(lines).replace(". \n", ".\n")


def randomize_demo(demo: str, num_hops: int, rng: random.Random) -> str:
    """Fresh names for the demo's answer variables and a fresh value for 12345 (RULER ``randomize_icl``)."""
    for name in demo.strip().split()[-(num_hops + 1) :]:
        demo = demo.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    return demo.replace(DEMO_VALUE, str(rng.randint(10000, 99998)))


@dataclass
class VariableTrackingGenerator(SizedGenerator):
    """The vt task: ``num_chains`` chains of ``num_hops`` hops in a noise haystack, with a demo.

    Parameters
    ----------
    length : int
        Target length in tokens, generation included.
    seed : int
        Run seed; the demo depends only on it (and the tokenizer).
    num_chains, num_hops : int
        RULER's vt: 1 chain, 4 hops.
    counter : TokenCounter
        Used once to fit the demo to its 500-token budget.
    """

    length: int
    seed: int
    counter: TokenCounter
    num_chains: int = 1
    num_hops: int = 4
    demo_mode: bool = False
    _demo: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.tokens_to_generate = 0 if self.demo_mode else TEMPLATES["variable_tracking"].tokens_to_generate

    def increment(self) -> int:
        if self.demo_mode:
            return 5
        return 5 if self.length < 4096 else 10

    def total_tokens(self, draft: Draft, count: TokenCounter) -> int:
        if self.demo_mode:  # the demo is bare text inside the prompt: no template, no special tokens
            return count.plain(draft.prompt + draft.answer_prefix)
        return super().total_tokens(draft, count)

    def draft(self, size: int, rng: random.Random, index: int) -> Draft:
        letters, value = (3, DEMO_VALUE) if self.demo_mode else (5, None)
        all_vars, chains = make_chains(rng, self.num_chains, self.num_hops, letters, value)
        query = chains[0][0].split("=")[-1].strip()
        task = TEMPLATES["variable_tracking"]
        context = noise_context(size, chains, rng)
        prompt = task.template.format(context=context, query=query, num_v=self.num_hops + 1)
        prefix = task.answer_prefix.format(query=query, num_v=self.num_hops + 1)
        if not self.demo_mode:
            prompt = randomize_demo(self.demo(), self.num_hops, rng) + "\n" + prompt
        # Question part: "\nQuestion: Find all variables that are assigned the value <query> ..." (the
        # demo before the task's template, with its own question and answer, is context).
        question = text_after(task.template, "{context}", {"query": query, "num_v": self.num_hops + 1})
        return Draft(
            prompt=prompt,
            answer_prefix=prefix,
            references=all_vars[0],
            meta={"chain": chains[0]},
            question_start=question_offset(prompt, question),
        )

    def demo(self) -> str:
        """The demo text: its filled template with answer prefix, a space, its answers, a newline."""
        if self._demo is not None:
            return self._demo
        maker = VariableTrackingGenerator(
            DEMO_LENGTH, self.seed, self.counter, self.num_chains, self.num_hops, demo_mode=True
        )

        def rng() -> random.Random:
            return random.Random(f"ruler:{self.seed}:vt-demo")

        size = maker.find_size(self.counter, rng)
        draft = maker.fit_sample(size, self.counter, rng, 0)
        self._demo = draft.prompt + draft.answer_prefix + " " + " ".join(draft.references) + "\n"
        return self._demo
