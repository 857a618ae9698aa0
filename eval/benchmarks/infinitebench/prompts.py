"""InfiniteBench prompts for open models: the ``yarn_mistral`` templates and ``create_prompt``.

Upstream uses these templates for every open-weight model (yarn-mistral, Yi-200K, ChatGLM3) and feeds
the filled text to the model as is. Each template ends with an answer cue ("The pass key is",
"Answer:", ...). With a chat template we move that cue out of the user turn and after the assistant
header (``Sample.answer_prefix``), so the model continues the cue instead of answering the user turn
from scratch; without one the prompt is byte-identical to upstream.
"""

from __future__ import annotations

import re

from eval.benchmarks.base import text_after
from eval.benchmarks.infinitebench.tasks import Example

# yarn_mistral_templates in OpenBMB/InfiniteBench src/prompt.py (@88b3daa), verbatim.
YARN_MISTRAL_TEMPLATES: dict[str, str] = {
    "passkey": (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information.\n\n{context}\n\n{input}\n\nThe pass key is"
    ),
    "number_string": (
        "There is an important info hidden inside a lot of irrelevant text. Find it. I will quiz you "
        "about the important information there.\n\n{context}\n\n{input}\n\nThe sequence of digits is"
    ),
    "kv_retrieval": (
        "Extract the value corresponding to the specified key in the JSON object below.\n\n{context}\n\n{input}"
    ),
    "longbook_sum_eng": "Summarize the book below.\n\n{context}\n\nSummary:",
    "longbook_choice_eng": (
        "Read the book and answer the question.\n\n{context}\n\nQuestion: {question}\nA. {OPTION_A}\n"
        "B. {OPTION_B}\nC. {OPTION_C}\nD. {OPTION_D}\n\nThe letter of the correct answer is"
    ),
    "longbook_qa_eng": (
        "Read the book and answer the question. Be very concise in your answer.\n\n{context}\n\n"
        "Question: {question}\nAnswer:"
    ),
    "longbook_qa_chn": "阅读以下书籍然后回答问题。\n\n{context}\n\n问题：{question}\n答案：",
    "math_find": "{prefix}\n\n{context}\n\n{input}",
    "math_calc": (
        "Let us calculate the intermediate values of an expression.\n\nExpression: 1 + 3 + 4\n"
        "Values: [1, 4, 8]\n\nExpression: 8 - 3 + 2 - 4\nValues: [8, 5, 7, 3]\n\nExpression: {context}\nValues:"
    ),
    "code_run": (
        "There is a function called {func} in the following Python code.\n\n{context}\n\n"
        "Please compute the exact value of {func_call}. The value of {func_call} is"
    ),
    "code_debug": (
        "Following is a Python code where exactly one of the functions/methods has a deliberate error "
        "that makes it crash.\n\n{context}\n\nOptions:\nA. {OPTION_A}\nB. {OPTION_B}\nC. {OPTION_C}\n"
        "D. {OPTION_D}\n\nThe correct option is:"
    ),
    "longdialogue_qa_eng": (
        'Below is a dialogue script where one random occurrence of a character name is replaced with "$$MASK$$", '
        "and you should try to guess who that character is.\n\n{context}\n\n"
        "The name that has been replaced with $$MASK$$ is likely"
    ),
}

# The answer cue at the very end of each filled prompt. Most come from the template; kv_retrieval's
# and math_find's come from the data's ``input`` field (released data and our generators alike).
_ANSWER_CUES: dict[str, re.Pattern[str]] = {
    task: re.compile(pattern + r"$")
    for task, pattern in {
        "passkey": re.escape("The pass key is"),
        "number_string": re.escape("The sequence of digits is"),
        "kv_retrieval": re.escape("The value associated with the specified key is:") + " ?",
        "longbook_sum_eng": re.escape("Summary:"),
        "longbook_choice_eng": re.escape("The letter of the correct answer is"),
        "longbook_qa_eng": re.escape("Answer:"),
        "longbook_qa_chn": re.escape("答案："),
        "math_find": r"The [^\n.]+ of the list is: ?",
        "math_calc": re.escape("Values:"),
        "code_run": r"The value of func_[0-9]+\(-?[0-9]+\) is",
        "code_debug": re.escape("The correct option is:"),
        "longdialogue_qa_eng": re.escape("The name that has been replaced with $$MASK$$ is likely"),
    }.items()
}
# Cues are short; searching only the tail keeps the regexes linear on 500k-character prompts.
_CUE_TAIL_CHARS = 400


def _options(example: Example) -> dict[str, str]:
    if len(example.options) < 4:
        raise ValueError(f"example {example.id} needs four options, got {example.options!r}")
    return {f"OPTION_{letter}": example.options[i] for i, letter in enumerate("ABCD")}


def template_fields(example: Example, task: str) -> dict[str, str]:
    """The values ``create_prompt`` fills the yarn_mistral template of ``task`` with.

    Mirrors ``create_prompt`` in src/eval_utils.py for the open-model templates: code_run extracts
    ``func_N(x)`` from the input, math_find turns "The <target> of" into a "What is <target> in the
    following list?" prefix, the choice tasks fill four options,
    and the book/dialogue tasks pass the input as ``{question}``.
    """
    if task == "code_run":
        func_call = re.findall(r"func_[0-9]+\(\-?[0-9]+\)", example.input)[0]
        func = func_call.split("(")[0]
        return {"func": func, "func_call": func_call, "context": example.context}
    if task == "code_debug":
        return {"context": example.context, **_options(example)}
    if task in ("longdialogue_qa_eng", "longbook_sum_eng", "math_calc"):
        return {"context": example.context}
    if task == "longbook_choice_eng":
        return {"question": example.input, "context": example.context, **_options(example)}
    if task in ("longbook_qa_eng", "longbook_qa_chn"):
        return {"question": example.input, "context": example.context}
    if task == "math_find":
        found = re.findall(r"The .+ of", example.input)
        if not found:
            raise ValueError(f"math_find example {example.id}: no 'The ... of' target in {example.input!r}")
        # "[:-3]" drops " of" (with its space): "What is the largest number in the following list?".
        target = found[0].lower()[:-3]
        prefix = f"What is {target} in the following list?"
        return {"prefix": prefix, "context": example.context, "input": example.input}
    return {"context": example.context, "input": example.input}


def create_prompt(example: Example, task: str) -> str:
    """Fill the yarn_mistral template of ``task`` (upstream ``create_prompt``, :func:`template_fields`)."""
    return YARN_MISTRAL_TEMPLATES[task].format(**template_fields(example, task))


def question_text(example: Example, task: str) -> str:
    """The question part of ``task``'s filled prompt: everything its template writes after ``{context}``.

    Templates that state the task before the context (math_find's "What is ... in the following
    list?", code_run's "There is a function called ...") keep that statement in the context part;
    the question part is what follows the context (src/prompt.py). Where nothing but the answer cue
    follows (longbook_sum_eng, math_calc, longdialogue_qa_eng), the question part is that cue.
    """
    return text_after(YARN_MISTRAL_TEMPLATES[task], "{context}", template_fields(example, task))


def split_answer_cue(task: str, prompt: str) -> tuple[str, str]:
    """Split a filled prompt into ``(user text, answer cue)``.

    The user text loses the whitespace that separated it from the cue, and the cue loses trailing
    spaces (a trailing space token right before generation is out of distribution for BPE models).
    When no cue is found (a truncated or unusual prompt) the prompt is returned whole with an empty cue.
    """
    head = max(0, len(prompt) - _CUE_TAIL_CHARS)
    match = _ANSWER_CUES[task].search(prompt, head)
    if match is None:
        return prompt, ""
    return prompt[: match.start()].rstrip(), match.group(0).rstrip()


def get_answer(example: Example, task: str) -> list:
    """The reference list the scorer expects (``get_answer`` in src/eval_utils.py).

    For the choice tasks it is ``[option text, letter]``; the released data and the hub schema hold
    the option text (a string or a one-item list), or already the pair.
    """
    if task in ("code_debug", "longbook_choice_eng"):
        letters = "ABCD"
        answer = example.answer
        if isinstance(answer, str):
            return [answer, letters[example.options.index(answer)]]
        if len(answer) == 1:
            return [answer[0], letters[example.options.index(answer[0])]]
        if len(answer) == 2 and answer[1] in ("A", "B", "C", "D"):
            return list(answer)
        raise ValueError(f"{task} example {example.id}: cannot read the answer {answer!r}")
    return list(example.answer) if isinstance(example.answer, list) else [example.answer]
