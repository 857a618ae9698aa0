"""Where each benchmark's question starts (``Sample.question_start``) and the token split of the prompt
(:func:`eval.sample_loop.build_prompt_parts`), on SmolLM2's tokenizer, chat-wrapped and plain.

Every check compares with expectations written here from the upstream templates, not from the code:
the question part must be the template's text after the context (hand-copied per task), followed by
SmolLM2's chat closing text and the answer prefix; the parts must re-assemble the aware prompt token
for token; the split may move by at most one token from the character boundary (a BPE merge or a
whitespace run across it); the context part must not contain the question and must be the bulk of
a long prompt. Benchmarks without a question (code completion, fidelity) have an empty question
part, so the two settings coincide there.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from eval.benchmarks.base import PromptContext, Sample, question_offset
from eval.benchmarks.code_completion import CodeCompletion
from eval.benchmarks.fidelity import Fidelity
from eval.benchmarks.infinitebench import InfiniteBench
from eval.benchmarks.infinitebench.tasks import SYNTHETIC_TASKS
from eval.benchmarks.longbench import LongBench, LongBenchE
from eval.benchmarks.niah import NeedleHaystack
from eval.benchmarks.ruler import Ruler
from eval.sample_loop import build_prompt_ids, build_prompt_parts
from lava.models import as_spec
from tests.conftest import model_config

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"
CHAT = as_spec(model_config())
PLAIN = as_spec({**model_config(), "chat_template": False})
SPECS = pytest.mark.parametrize("spec", [CHAT, PLAIN], ids=["chat", "plain"])
# SmolLM2-Instruct's chat template closes the user turn with this text (its tokenizer_config.json).
CHAT_CLOSE = "<|im_end|>\n<|im_start|>assistant\n"


def ctx_for(tokenizer, max_prompt_tokens=7500):
    return PromptContext(
        tokenizer=tokenizer, model_name="smollm2-135m", max_prompt_tokens=max_prompt_tokens, seed=5
    )


def check_split(
    sample: Sample, tok, spec, question: str, absent: str | None, min_share: float | None = 0.8
) -> tuple[list[int], list[int]]:
    """The split of ``sample`` under ``spec``: re-assembly, the question part's text, the context's share.

    ``question``: the question text the prompt ends with (hand-derived from the template);
    ``absent``: text that must not be in the context part; ``min_share``: least fraction of the
    prompt's tokens in the context part.
    """
    ids = build_prompt_ids(sample, tok, spec)
    context, rest = build_prompt_parts(sample, tok, spec)
    assert context + rest == ids, sample.id  # (a) token for token
    assert sample.prompt.endswith(question), sample.id
    wrapped = sample.chat and spec.chat_template
    closing = (CHAT_CLOSE if wrapped else "") + sample.answer_prefix
    rest_text = tok.decode(rest, skip_special_tokens=False)
    context_text = tok.decode(context, skip_special_tokens=False)
    # (b) the question part is the question, the chat closing text and the answer prefix ...
    assert rest_text.endswith(question + closing), (sample.id, rest_text[-300:])
    moved = rest_text[: len(rest_text) - len(question + closing)]
    # ... plus at most one token of the context's end, where a token spans the boundary
    assert len(tok.encode(moved, add_special_tokens=False)) <= 1, (sample.id, moved)
    if absent:
        assert absent in sample.prompt and absent not in context_text, (sample.id, absent)
    # (d) the chat-wrapped context part opens with the chat template's header, the plain one with the prompt
    if wrapped:
        assert context_text.startswith("<|im_start|>system\n")
    else:
        assert sample.prompt.startswith(context_text)
    if min_share is not None:  # (c) the context part is the bulk of a long prompt
        assert len(context) > min_share * len(ids), (sample.id, len(context), len(ids))
    return context, rest


# ----------------------------------------------------------------------------------------- NIAH


@SPECS
def test_niah_question_follows_the_book(smollm2_tokenizer, spec):
    samples = list(
        NeedleHaystack(lengths=[400, 700], depths=[0, 50, 100]).samples(ctx_for(smollm2_tokenizer))
    )
    # PyramidKV / LAVa prompt: "... </book>.\n Based on the content of the book, Question: {question}\nAnswer:"
    question = (
        "\n Based on the content of the book, Question: The best thing to do in San Francisco is: \nAnswer:"
    )
    for sample in samples:
        assert sample.question_start == len(sample.prompt) - len(question)
        assert sample.prompt[: sample.question_start].endswith("</book>.")
        for chat in (False, True):  # NIAH is asked raw; the chat-wrapped form exercises the same split
            context, _ = check_split(
                replace(sample, chat=chat), smollm2_tokenizer, spec, question, "Based on"
            )
            assert smollm2_tokenizer.decode(context).endswith("</book>.")


# ---------------------------------------------------------------------------------------- RULER


def ruler_question(sample: Sample) -> tuple[str, str]:
    """(question, absent) of a RULER sample: RULER constants.py's text after ``{context}``."""
    task, prompt = sample.task, sample.prompt
    if task.startswith("niah"):
        found = re.search(
            r"\nWhat (is|are all) the special magic (number|uuid|word)s? for [^\n]+ mentioned in the provided text\?\Z",
            prompt,
        )
        assert found, sample.id
        return found.group(0), "mentioned in the provided text?"
    if task == "vt":
        value = sample.meta["chain"][0].split("=")[-1].strip()
        line = f"Question: Find all variables that are assigned the value {value} in the text above."
        return "\n" + line, line  # the demo before the template asks about another value
    if task == "cwe":
        return "\nQuestion: What are the 10 most common words in the above list?", None
    if task == "fwe":
        line = (
            "Question: Do not provide any explanation. Please ignore the dots '....'. "
            "What are the three most frequently appeared words in the above coded text?"
        )
        return "\n" + line, line
    assert task in ("qa_1", "qa_2"), task
    instruction = "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    found = re.search(rf"\n\n{re.escape(instruction)}\n\nQuestion: ([^\n]+)\Z", prompt)
    assert found, sample.id
    return found.group(0), "Question: " + found.group(1)


SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Rivers",
            "paragraphs": [
                {
                    "context": "The Nile flows north through Egypt into the Mediterranean Sea.",
                    "qas": [
                        {
                            "question": "Where does the Nile flow?",
                            "is_impossible": False,
                            "answers": [{"text": "north", "answer_start": 14}],
                        }
                    ],
                },
                {
                    "context": "The Amazon carries more water than any other river on Earth.",
                    "qas": [
                        {
                            "question": "Which river carries the most water?",
                            "is_impossible": False,
                            "answers": [{"text": "The Amazon", "answer_start": 0}],
                        }
                    ],
                },
            ],
        }
    ],
}
HOTPOT = [
    {
        "_id": "h1",
        "question": "Which city hosts the tower?",
        "answer": "Paris",
        "context": [["Eiffel Tower", ["The tower ", "is in Paris."]], ["Louvre", ["A museum."]]],
    },
    {
        "_id": "h2",
        "question": "What is the museum?",
        "answer": "the Louvre",
        "context": [["Louvre", ["A museum."]], ["Seine", ["A river ", "in France."]]],
    },
]


@pytest.fixture(scope="module")
def ruler_samples(smollm2_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    (folder / "dev-v2.0.json").write_text(json.dumps(SQUAD))
    (folder / "hotpotqa.json").write_text(json.dumps(HOTPOT))
    bench = Ruler(tasks="all", lengths=[1024], num_samples=2, qa_data_dir=str(folder), cache=False)
    return list(bench.samples(ctx_for(smollm2_tokenizer)))


@SPECS
def test_ruler_question_is_the_text_after_the_haystack(smollm2_tokenizer, ruler_samples, spec):
    tasks = {s.task for s in ruler_samples}
    assert len(tasks) == 13 and all(s.chat for s in ruler_samples)
    for sample in ruler_samples:
        question, absent = ruler_question(sample)
        assert sample.question_start == len(sample.prompt) - len(question)
        check_split(sample, smollm2_tokenizer, spec, question, absent)
        if sample.task == "cwe":  # the few-shot example asks the same question: one copy stays in the context
            context, _ = build_prompt_parts(sample, smollm2_tokenizer, spec)
            line = question.strip()
            assert sample.prompt.count(line) == 2 and smollm2_tokenizer.decode(context).count(line) == 1


def test_ruler_cached_samples_keep_their_split(smollm2_tokenizer, monkeypatch, tmp_path):
    monkeypatch.setenv("LAVA_BENCH_CACHE", str(tmp_path))
    bench = Ruler(tasks=["niah_single_1", "fwe"], lengths=[512], num_samples=2)
    fresh = list(bench.samples(ctx_for(smollm2_tokenizer)))
    cached = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert cached == fresh and all(s.question_start is not None for s in cached)


# -------------------------------------------------------------------------------- InfiniteBench


def infinitebench_question(task: str, example) -> str:
    """The filled text after ``{context}`` of the yarn_mistral template (InfiniteBench src/prompt.py)."""
    text = example.input
    options = "".join(f"{letter}. {o}\n" for letter, o in zip("ABCD", example.options, strict=False))
    if task == "passkey":
        return f"\n\n{text}\n\nThe pass key is"
    if task == "number_string":
        return f"\n\n{text}\n\nThe sequence of digits is"
    if task in ("kv_retrieval", "math_find"):
        return f"\n\n{text}"
    if task == "math_calc":
        return "\nValues:"
    if task == "code_run":
        call = re.search(r"func_[0-9]+\(-?[0-9]+\)", text).group(0)
        return f"\n\nPlease compute the exact value of {call}. The value of {call} is"
    if task == "longbook_qa_eng":
        return f"\n\nQuestion: {text}\nAnswer:"
    if task == "longbook_qa_chn":
        return f"\n\n问题：{text}\n答案："
    if task == "longbook_sum_eng":
        return "\n\nSummary:"
    if task == "longbook_choice_eng":
        return f"\n\nQuestion: {text}\n{options}\nThe letter of the correct answer is"
    if task == "code_debug":
        return f"\n\nOptions:\n{options}\nThe correct option is:"
    assert task == "longdialogue_qa_eng"
    return "\n\nThe name that has been replaced with $$MASK$$ is likely"


def in_prompt(question: str, sample: Sample) -> str:
    """What of the template's question stays in the user text once the answer cue is moved after the
    chat template (the cue and the whitespace before it leave)."""
    if not sample.answer_prefix:
        return question
    kept = question.rstrip()
    assert kept.endswith(sample.answer_prefix)
    return kept[: len(kept) - len(sample.answer_prefix)].rstrip()


def check_infinitebench(bench: InfiniteBench, tok, spec, min_share: float | None = 0.8) -> list[Sample]:
    ctx = ctx_for(tok)
    samples = list(bench.samples(ctx))
    examples = [e for task in bench.tasks for e in bench.examples(task, ctx)]
    assert len(samples) == len(examples)
    for sample, example in zip(samples, examples, strict=True):
        question = in_prompt(infinitebench_question(sample.task, example), sample)
        assert sample.question_start == len(sample.prompt) - len(question)
        # math_calc's question is its cue "Values:", which the few-shot lines before the context hold too
        absent = None if sample.task == "math_calc" else question.strip() or None
        check_split(sample, tok, spec, question, absent, min_share)
    return samples


@SPECS
@pytest.mark.parametrize("chat", [True, False], ids=["cue-after-template", "raw-text"])
def test_infinitebench_synthetic_question_follows_the_context(smollm2_tokenizer, spec, chat):
    bench = InfiniteBench(source="synthetic", num_samples=2, max_length=700, chat=chat)
    samples = check_infinitebench(bench, smollm2_tokenizer, spec)
    assert {s.task for s in samples} == set(SYNTHETIC_TASKS)
    if chat:  # math_calc's question is its cue alone: nothing of it stays in the user text
        calc = next(s for s in samples if s.task == "math_calc")
        assert calc.question_start == len(calc.prompt) and calc.answer_prefix == "Values:"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@SPECS
def test_infinitebench_released_formats_and_truncation(smollm2_tokenizer, spec, tmp_path):
    book = "START " + " ".join(f"word{i}" for i in range(3000)) + " END"
    rows = {
        "longbook_qa_eng": [{"id": 0, "context": book, "input": "Who wrote it?", "answer": ["Ann"]}],
        "longbook_sum_eng": [
            {"id": 1, "context": "The sea was calm. " * 150, "input": "", "answer": ["calm"]}
        ],
        "longbook_choice_eng": [
            {
                "id": 2,
                "context": "The door of the house was painted blue. " * 100,
                "input": "Which colour is the door?",
                "answer": ["Blue"],
                "options": ["Red", "Blue", "Green", "White"],
            }
        ],
        "code_debug": [
            {
                "id": 3,
                "context": "def f(x):\n    return x + 1\n\n\n" * 80,
                "input": "",
                "answer": ["g"],
                "options": ["f", "g", "h", "k"],
            }
        ],
        "longdialogue_qa_eng": [
            {
                "id": 4,
                "context": "ALICE: Hello $$MASK$$.\nBOB: Hi there.\n" * 60,
                "input": "",
                "answer": ["BOB"],
            }
        ],
        "longbook_qa_chn": [
            {"id": 5, "context": "这是一本关于大海的书。" * 60, "input": "书里写了什么？", "answer": ["大海"]}
        ],
    }
    for task, task_rows in rows.items():
        write_jsonl(tmp_path / f"{task}.jsonl", task_rows)
    bench = InfiniteBench(source="local", data_dir=str(tmp_path), tasks=list(rows), max_length=1200)
    samples = check_infinitebench(bench, smollm2_tokenizer, spec)
    by_task = {s.task: s for s in samples}
    qa = by_task["longbook_qa_eng"]
    assert qa.meta["truncated"] and "word1500 " not in qa.prompt  # the middle is gone, the question kept
    assert qa.prompt[qa.question_start :] == "\n\nQuestion: Who wrote it?"
    assert not any(s.meta["truncated"] for s in samples if s is not qa)


# ------------------------------------------------------------------------------------ LongBench

# LongBench config/dataset2prompt.json (THUDM/LongBench @ 2e00731f), each template's text after
# {context}, hand-copied (tests/test_longbench_benchmark.py pins the file's bytes).
LONGBENCH_AFTER_CONTEXT = {
    "narrativeqa": "\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": '\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:',
    "multifieldqa_en": "\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "\n\n会议总结：",
    "trec": "\n{input}",
    "triviaqa": "\n\n{input}",
    "samsum": "\n\n{input}",
    "lsht": "\n{input}",
    "passage_count": "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": '\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: ',
    "passage_retrieval_zh": '\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n\n答案是：',
    "lcc": "Next line of code:\n",
    "repobench-p": "{input}Next line of code:\n",
}


def longbench_question(task: str, record: dict) -> tuple[str, str]:
    """(question, absent): the text after the context, and its first line with the record's question
    (or, for tasks without one, the instruction after the context)."""
    question = LONGBENCH_AFTER_CONTEXT[task].replace("{input}", record["input"])
    first = (
        record["input"].strip().splitlines()[0]
        if record["input"].strip()
        else question.strip().splitlines()[0]
    )
    return question, first


def long_records(folder: Path, repeats: int) -> None:
    """The fixture records with each context repeated ``repeats`` times (long prompts, same questions)."""
    folder.mkdir()
    for path in FIXTURES.glob("*.jsonl"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for row in rows:
            row["context"] = "\n".join([row["context"]] * repeats)
        write_jsonl(folder / path.name, rows)


@SPECS
@pytest.mark.parametrize("limit", [20_000, 1000], ids=["whole", "middle-truncated"])
def test_longbench_question_is_the_text_after_the_context(smollm2_tokenizer, spec, tmp_path, limit):
    long_records(tmp_path / "data", repeats=60)
    bench = LongBench(tasks="all", data_dir=str(tmp_path / "data"), max_prompt_tokens=limit)
    samples = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert len(samples) == 42 and all(s.meta["truncated"] == (limit == 1000) for s in samples)
    records = {}
    for path in sorted((tmp_path / "data").glob("*.jsonl")):
        if not path.stem.endswith("_e"):
            records[path.stem] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    seen = {}
    for sample in samples:
        record = records[sample.task][seen.setdefault(sample.task, 0)]
        seen[sample.task] += 1
        question, absent = longbench_question(sample.task, record)
        assert sample.question_start == len(sample.prompt) - len(question), sample.id
        check_split(sample, smollm2_tokenizer, spec, question, absent)


@SPECS
def test_longbench_fixtures_short_prompts(smollm2_tokenizer, spec):
    """The shipped fixtures as they are, LongBench-E's included (short prompts: no share asked)."""
    records = {}
    for path in FIXTURES.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            records[json.loads(line)["_id"]] = json.loads(line)
    ctx = ctx_for(smollm2_tokenizer)
    samples = [*LongBench(tasks="all", data_dir=str(FIXTURES)).samples(ctx)]
    samples += LongBenchE(data_dir=str(FIXTURES)).samples(ctx)
    assert len(samples) == 42 + 26
    for sample in samples:
        question, absent = longbench_question(sample.task, records[sample.id.split("/", 1)[1]])
        assert sample.question_start == len(sample.prompt) - len(question), sample.id
        check_split(sample, smollm2_tokenizer, spec, question, absent, min_share=None)


# ----------------------------------------------------------------------- no question: both settings agree


@SPECS
def test_code_completion_has_no_question(smollm2_tokenizer, spec):
    samples = list(CodeCompletion(lengths=[256], num_samples=3).samples(ctx_for(smollm2_tokenizer)))
    assert len(samples) == 3
    for sample in samples:
        assert sample.question_start is None and sample.prompt.endswith("Next line of code:\n")
        assert build_prompt_parts(sample, smollm2_tokenizer, spec) == (
            build_prompt_ids(sample, smollm2_tokenizer, spec),
            [],
        )


@SPECS
def test_fidelity_has_no_question(smollm2_tokenizer, spec):
    bench = Fidelity(lengths=[64], continuation_tokens=4, samples_per_source=2, sources=["essays"])
    samples = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert len(samples) == 2
    for sample in samples:
        assert sample.question_start is None
        ids = build_prompt_ids(sample, smollm2_tokenizer, spec)
        assert build_prompt_parts(sample, smollm2_tokenizer, spec) == (ids, [])


# -------------------------------------------------------------------------------- the mechanics


def test_question_offset_by_hand():
    assert question_offset("ctx ctx\nQ: why?", "\nQ: why?") == 7
    # a middle truncation that cut into the question keeps what survives of it: "y?" (2 characters)
    assert question_offset("head...y?", "\nQ: why?") == 7
    assert question_offset("head", "\nQ: why?") == 4  # nothing of it survives


def test_a_boundary_inside_a_token_moves_the_split_by_that_token(smollm2_tokenizer):
    """A question offset in the middle of a word: the word's token goes to the question part whole."""
    prompt = "The harbour was quiet that evening. Question: where?"
    cut = prompt.index("quiet") + 2  # inside "quiet"
    sample = Sample(
        id="x", task="t", prompt=prompt, references=[], max_new_tokens=1, chat=False, question_start=cut
    )
    context, rest = build_prompt_parts(sample, smollm2_tokenizer, PLAIN)
    assert context + rest == build_prompt_ids(sample, smollm2_tokenizer, PLAIN)
    assert smollm2_tokenizer.decode(context) == "The harbour was"
    assert smollm2_tokenizer.decode(rest) == " quiet that evening. Question: where?"


def test_a_chat_template_that_trims_the_user_text(smollm2_tokenizer):
    tok = copy.copy(smollm2_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    prompt = "\n  A long story about a lighthouse.\n\nQuestion: who lives there?  \n"
    start = prompt.index("\n\nQuestion")
    sample = Sample(id="y", task="t", prompt=prompt, references=[], max_new_tokens=1, question_start=start)
    context, rest = build_prompt_parts(sample, tok, CHAT)
    assert context + rest == build_prompt_ids(sample, tok, CHAT)
    assert tok.decode(context).endswith("A long story about a lighthouse.")
    assert tok.decode(rest) == "\n\nQuestion: who lives there?<|im_end|>\n<|im_start|>assistant\n"


def test_an_offset_outside_the_prompt_is_refused(smollm2_tokenizer):
    sample = Sample(
        id="z", task="t", prompt="abc", references=[], max_new_tokens=1, chat=False, question_start=4
    )
    with pytest.raises(ValueError, match="question_start=4"):
        build_prompt_parts(sample, smollm2_tokenizer, PLAIN)
