"""InfiniteBench benchmark: config checks, sample building (chat and raw), truncation, loaders, tables."""

import json
from pathlib import Path

import pytest
import yaml

from eval.benchmarks.base import PromptContext
from eval.benchmarks.infinitebench import InfiniteBench
from eval.benchmarks.infinitebench.loaders import hub_features, load_hub, to_example
from eval.benchmarks.infinitebench.prompts import create_prompt, get_answer
from eval.benchmarks.infinitebench.tasks import PAPER_TASKS, SYNTHETIC_TASKS
from eval.metrics.infinitebench import score_one
from lava.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def ctx_for(tokenizer, chat_template=True, max_prompt_tokens=900):
    return PromptContext(
        tokenizer=tokenizer,
        model_name="smollm2-135m",
        max_prompt_tokens=max_prompt_tokens,
        seed=5,
        chat_template=chat_template,
    )


def test_config_file_builds_the_benchmark():
    from hydra.utils import instantiate

    cfg = yaml.safe_load((REPO / "configs" / "bench" / "infinitebench.yaml").read_text())
    assert cfg.pop("question") == "aware"  # the run's setting (eval.sample_loop.build_benchmark drops it)
    bench = instantiate(cfg, _convert_="all")
    assert isinstance(bench, InfiniteBench) and bench.name == "infinitebench"
    assert bench.tasks == list(PAPER_TASKS) and bench.source == "hub"


def test_default_tasks_depend_on_the_source():
    assert InfiniteBench(source="synthetic").tasks == list(SYNTHETIC_TASKS)
    assert InfiniteBench(source="local", data_dir="x").tasks == list(PAPER_TASKS)
    assert InfiniteBench(tasks="passkey, code_run", source="synthetic").tasks == ["passkey", "code_run"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "web"}, "bench.source"),
        ({"tasks": ["passkey_eng"]}, "unknown"),
        ({"source": "synthetic", "tasks": ["passkey", "longbook_qa_eng"]}, "cannot generate"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_length": -5}, "max_length"),
        ({"max_new_tokens": {"passkey": 0}}, "max_new_tokens"),
        ({"hub_format": "parquet"}, "hub_format"),
    ],
)
def test_bad_config_is_a_one_line_user_error(kwargs, message):
    with pytest.raises(UserError, match=message) as info:
        InfiniteBench(**kwargs)
    assert "\n" not in str(info.value)


def test_synthetic_samples_chat_mode(smollm2_tokenizer):
    bench = InfiniteBench(source="synthetic", num_samples=2, max_length=700)
    samples = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert [s.id for s in samples] == [f"{t}-{i}" for t in SYNTHETIC_TASKS for i in range(2)]
    by_id = {s.id: s for s in samples}
    passkey = by_id["passkey-1"]
    assert passkey.chat and passkey.answer_prefix == "The pass key is"
    assert passkey.prompt.endswith("\n\nWhat is the pass key?")
    assert passkey.max_new_tokens == 6 and not passkey.stop_newline
    assert by_id["code_run-0"].answer_prefix.startswith("The value of func_")
    for s in samples:
        assert len(smollm2_tokenizer.encode(s.prompt + s.answer_prefix, add_special_tokens=False)) <= 700
        assert not s.meta["truncated"] and s.meta["source"] == "synthetic"
        json.dumps(s.references), json.dumps(s.meta)  # records are JSON


def test_raw_mode_is_upstreams_exact_text(smollm2_tokenizer):
    bench = InfiniteBench(
        source="synthetic", tasks=["kv_retrieval"], num_samples=1, max_length=600, chat=False
    )
    sample = next(iter(bench.samples(ctx_for(smollm2_tokenizer))))
    example = next(iter(bench.examples("kv_retrieval", ctx_for(smollm2_tokenizer))))
    assert sample.answer_prefix == "" and not sample.chat
    assert sample.prompt == create_prompt(example, "kv_retrieval")
    assert sample.prompt.endswith("The value associated with the specified key is: ")
    # A model config without chat template also gets the raw text.
    plain = next(
        iter(
            InfiniteBench(source="synthetic", tasks=["kv_retrieval"], num_samples=1, max_length=600).samples(
                ctx_for(smollm2_tokenizer, chat_template=False)
            )
        )
    )
    assert plain.prompt == sample.prompt and plain.answer_prefix == ""


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_local_data_is_middle_truncated_to_max_length(tmp_path, smollm2_tokenizer):
    book = "START " + " ".join(f"word{i}" for i in range(3000)) + " END"
    write_jsonl(
        tmp_path / "longbook_qa_eng.jsonl",
        [
            {"id": 0, "context": book, "input": "Who?", "answer": ["Peyton"], "options": []},
            {"id": 1, "context": "short book", "input": "Where?", "answer": ["Here"], "options": []},
            {"id": 2, "context": "unused", "input": "?", "answer": ["x"], "options": []},
        ],
    )
    bench = InfiniteBench(
        source="local", data_dir=str(tmp_path), tasks=["longbook_qa_eng"], num_samples=2, max_length=400
    )
    long, short = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert long.meta["truncated"]
    assert (
        len(smollm2_tokenizer.encode(long.prompt + "\n" + long.answer_prefix, add_special_tokens=False))
        <= 401
    )
    assert long.prompt.startswith("Read the book and answer the question.") and "START" in long.prompt
    assert "word1500 " not in long.prompt  # the middle is gone
    assert long.prompt.endswith("END\n\nQuestion: Who?") and long.answer_prefix == "Answer:"
    assert not short.meta["truncated"] and short.references == ["Here"] and short.max_new_tokens == 40


def test_max_length_defaults_to_the_model_window(tmp_path, smollm2_tokenizer):
    write_jsonl(
        tmp_path / "longbook_sum_eng.jsonl",
        [{"id": 3, "context": "word " * 2000, "input": "", "answer": ["A summary."]}],
    )
    bench = InfiniteBench(source="local", data_dir=str(tmp_path), tasks=["longbook_sum_eng"])
    sample = next(iter(bench.samples(ctx_for(smollm2_tokenizer, max_prompt_tokens=300))))
    assert sample.meta["truncated"] and sample.id == "longbook_sum_eng-3" and sample.max_new_tokens == 1200


def test_local_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="code_run.jsonl"):
        list(
            InfiniteBench(source="local", data_dir=str(tmp_path), tasks=["code_run"]).examples(
                "code_run", None
            )
        )
    with pytest.raises(UserError, match="data_dir"):
        list(InfiniteBench(source="local", tasks=["code_run"]).examples("code_run", None))


def test_hub_offline_is_a_one_line_user_error():
    # conftest sets HF_HUB_OFFLINE=1: nothing is fetched, and this repo is in no cache.
    with pytest.raises(UserError, match="bench.source=local") as info:
        load_hub("passkey", repo="lava-bench-tests/no-such-dataset")
    assert "\n" not in str(info.value)


def test_hub_schema_strings_are_cast_back_by_the_scorers():
    from datasets import Dataset

    rows = [
        {"id": 0, "context": "c", "input": "i", "answer": ["88"], "options": []},  # math_find, int -> "88"
        {"id": 1, "context": "c", "input": "i", "answer": ["-7"], "options": []},  # code_run
        {"id": 2, "context": "c", "input": "i", "answer": ["f", "B"], "options": ["e", "f", "g", "h"]},
    ]
    ds = Dataset.from_list(rows, features=hub_features())
    math_find, code_run, choice = (to_example(r, i) for i, r in enumerate(ds))
    assert math_find.answer == ["88"] and isinstance(math_find.answer[0], str)
    assert score_one("math_find", "88", get_answer(math_find, "math_find")) == 1.0
    assert score_one("code_run", "The value is -7", get_answer(code_run, "code_run")) == 1.0
    assert score_one("longbook_choice_eng", "B", get_answer(choice, "longbook_choice_eng")) == 1.0


def test_math_calc_limit_keeps_upstreams_allowance_per_value():
    bench = InfiniteBench(source="synthetic")
    assert bench.generation_limit("math_calc", list(range(14999))) == 30000  # released size: upstream
    assert bench.generation_limit("math_calc", list(range(500))) == 1001  # two tokens per value
    assert bench.generation_limit("math_calc", [str(v) for v in range(500)]) == 1001
    assert InfiniteBench(max_new_tokens={"math_calc": 64}).generation_limit("math_calc", [1] * 500) == 64


def records(task_scores):
    return [
        {"id": f"{t}-{i}", "task": t, "scores": {"score": s}}
        for t, ss in task_scores.items()
        for i, s in enumerate(ss)
    ]


def test_aggregate_is_the_mean_over_tasks_in_percent():
    recs = records({"kv_retrieval": [1.0, 0.0, 1.0, 1.0], "passkey": [0.0], "math_calc": [0.5, 0.25]})
    out = InfiniteBench(source="synthetic").aggregate(recs)
    assert out["per_task"]["kv_retrieval"] == {"num_samples": 4, "score": 75.0}
    assert out["per_task"]["math_calc"]["score"] == pytest.approx(37.5)
    assert out["score"] == pytest.approx((75.0 + 0.0 + 37.5) / 3)  # not the mean over the 7 samples
    assert out["num_samples"] == 7
    assert InfiniteBench(source="synthetic").scores_json(recs)["unit"] == "percent"  # declared by the class


def test_write_artifacts_csv_and_markdown(tmp_path):
    recs = records({"passkey": [1.0, 0.0], "code_run": [1.0]})
    paths = InfiniteBench(source="synthetic").write_artifacts(tmp_path, recs)
    csv, md = (p.read_text() for p in paths)
    assert csv.splitlines() == ["task,num_samples,score", "passkey,2,50.0000", "code_run,1,100.0000"]
    assert "| passkey | 2 | 50.00 |" in md and "| **average** | 3 | 75.00 |" in md
    assert InfiniteBench(source="synthetic").write_artifacts(tmp_path, []) == []
