"""InfiniteBench prompts: upstream's exact templates, create_prompt's special cases, the answer cue split."""

import hashlib
import json

import pytest

from eval.benchmarks.infinitebench.prompts import (
    YARN_MISTRAL_TEMPLATES,
    create_prompt,
    get_answer,
    split_answer_cue,
)
from eval.benchmarks.infinitebench.tasks import ALL_TASKS, Example

# sha256 of json.dumps(yarn_mistral_templates, sort_keys=True, ensure_ascii=False), computed from
# OpenBMB/InfiniteBench src/prompt.py @ 88b3daa.
UPSTREAM_TEMPLATES_SHA256 = "ede60cb9c1c20f1de5de4cd90ee9c5ac7bcd111fc70ac9c7954ac93e9b790bf5"

OPTIONS = ["alpha()", "beta()", "gamma()", "delta()"]


def example(task: str) -> Example:
    inputs = {
        "code_run": "Please give me the exact number of the return value of func_12(-3). Your response ...",
        "math_find": "You should answer with only one number, no other words. The second largest number of the list is: ",
        "kv_retrieval": '\nKey: "k1"\nThe value associated with the specified key is: ',
    }
    return Example(id=7, context="CTX", input=inputs.get(task, "Q?"), answer=["beta()"], options=OPTIONS)


def test_templates_are_upstream_byte_for_byte():
    blob = json.dumps(YARN_MISTRAL_TEMPLATES, sort_keys=True, ensure_ascii=False).encode()
    assert hashlib.sha256(blob).hexdigest() == UPSTREAM_TEMPLATES_SHA256
    assert set(YARN_MISTRAL_TEMPLATES) == set(ALL_TASKS)


def test_passkey_prompt():
    text = create_prompt(example("passkey"), "passkey")
    assert text == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz "
        "you about the important information.\n\nCTX\n\nQ?\n\nThe pass key is"
    )


def test_math_find_prefix_from_the_input_target():
    # Upstream's `re.findall(r"The .+ of", input)[0].lower()[:-3]` drops " of" with its space
    # (one might expect a double space to remain; running upstream's create_prompt shows one).
    text = create_prompt(example("math_find"), "math_find")
    assert text.startswith("What is the second largest number in the following list?\n\nCTX\n\nYou should")


def test_code_run_fills_function_and_call():
    text = create_prompt(example("code_run"), "code_run")
    assert text.startswith("There is a function called func_12 in the following Python code.\n\nCTX\n\n")
    assert text.endswith("Please compute the exact value of func_12(-3). The value of func_12(-3) is")


def test_choice_and_debug_fill_options():
    choice = create_prompt(example("longbook_choice_eng"), "longbook_choice_eng")
    assert "Question: Q?\nA. alpha()\nB. beta()\nC. gamma()\nD. delta()\n\nThe letter" in choice
    debug = create_prompt(example("code_debug"), "code_debug")
    assert (
        "\n\nCTX\n\nOptions:\nA. alpha()\nB. beta()\nC. gamma()\nD. delta()\n\nThe correct option is:"
        in debug
    )


@pytest.mark.parametrize("answer", ["beta()", ["beta()"], ["beta()", "B"]])
def test_get_answer_builds_text_letter_pairs(answer):
    ex = Example(id=0, context="", input="", answer=answer, options=OPTIONS)
    assert get_answer(ex, "code_debug") == ["beta()", "B"]
    assert get_answer(ex, "longbook_choice_eng") == ["beta()", "B"]


def test_get_answer_passes_other_labels_through():
    ex = Example(id=0, context="", input="", answer=[88])
    assert get_answer(ex, "math_find") == [88]


@pytest.mark.parametrize(
    ("task", "cue"),
    [
        ("passkey", "The pass key is"),
        ("number_string", "The sequence of digits is"),
        ("kv_retrieval", "The value associated with the specified key is:"),
        ("longbook_sum_eng", "Summary:"),
        ("longbook_choice_eng", "The letter of the correct answer is"),
        ("longbook_qa_eng", "Answer:"),
        ("longbook_qa_chn", "答案："),
        ("math_find", "The second largest number of the list is:"),
        ("math_calc", "Values:"),
        ("code_run", "The value of func_12(-3) is"),
        ("code_debug", "The correct option is:"),
        ("longdialogue_qa_eng", "The name that has been replaced with $$MASK$$ is likely"),
    ],
)
def test_answer_cue_split(task, cue):
    text = create_prompt(example(task), task)
    body, found = split_answer_cue(task, text)
    assert found == cue
    # Only whitespace separated the user text from the cue.
    assert text.startswith(body) and text[len(body) :].strip() == cue
    assert body == body.rstrip() and "CTX" in body


def test_no_cue_leaves_prompt_whole():
    assert split_answer_cue("passkey", "just some text") == ("just some text", "")
