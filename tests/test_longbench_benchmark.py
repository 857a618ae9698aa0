"""LongBench benchmark: task selection, prompts, truncation, chat flags, loaders and errors."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from eval.benchmarks import longbench_loader
from eval.benchmarks.base import PromptContext
from eval.benchmarks.longbench import LongBench, LongBenchE
from eval.benchmarks.longbench_tasks import DATA_DIR, max_new_tokens, prompt_templates, resolve_tasks
from lava.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "longbench"
PAPER_16 = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
]


class CharTokenizer:
    """One token per character: middle truncation becomes checkable by hand."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def char_ctx(max_prompt_tokens=100_000):
    return PromptContext(tokenizer=CharTokenizer(), model_name="toy", max_prompt_tokens=max_prompt_tokens)


def read_fixture(task, suffix=""):
    return [json.loads(line) for line in (FIXTURES / f"{task}{suffix}.jsonl").read_text().splitlines()]


# --- task selection -----------------------------------------------------------------------------


def test_task_sets():
    assert resolve_tasks("default") == PAPER_16
    assert len(resolve_tasks("all")) == 21
    assert resolve_tasks("zh") == ["multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"]
    assert resolve_tasks(["trec", "qasper", "trec"]) == ["trec", "qasper"]
    assert resolve_tasks("lcc,repobench-p") == ["lcc", "repobench-p"]
    e = resolve_tasks("default", variant_e=True)
    assert len(e) == 13 and "narrativeqa" not in e and "musique" not in e and "qmsum" not in e
    assert resolve_tasks("all", variant_e=True) == e


@pytest.mark.parametrize(
    ("spec", "variant_e"), [(["qasperr"], False), ("zh", True), (["musique"], True), ([], False)]
)
def test_bad_task_selection_is_a_user_error(spec, variant_e):
    with pytest.raises(UserError):
        resolve_tasks(spec, variant_e=variant_e)


def test_bad_task_fails_at_construction():
    # Before any model is loaded: the runner builds the benchmark first.
    with pytest.raises(UserError, match="narrativeqa_e|unknown"):
        LongBenchE(tasks=["narrativeqa"])


# --- prompt data --------------------------------------------------------------------------------


def test_prompt_files_are_upstream_bytes():
    # sha256 of LongBench/config/*.json at THUDM/LongBench 2e00731f
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in DATA_DIR.glob("*.json")}
    assert digest["dataset2prompt.json"] == "56d22ad4f382169c2b8a11ff4c982a4a1bea096c8152b0f0b85b64686b157c30"
    assert digest["dataset2maxlen.json"] == "72966b3c0933e214591637fb085798c5e687ebff4ddaab5d99bbc31120532022"


def test_prompt_quirks_kept():
    p = prompt_templates()
    assert p["narrativeqa"].count("asconcisely") == 2
    assert "{context}\n\n Answer the question based on the above article" in p["qasper"]
    assert "Write a one-page summary of all news. \n\nNews:" in p["multi_news"]
    assert p["passage_count"].endswith("The final answer is: ")
    assert p["passage_retrieval_en"].endswith("The answer is: ")
    assert p["passage_retrieval_zh"].endswith("答案是：")
    assert p["repobench-p"] == "Please complete the code given below. \n{context}{input}Next line of code:\n"
    m = max_new_tokens()
    assert (m["gov_report"], m["samsum"], m["hotpotqa"], m["lcc"]) == (512, 128, 32, 64)


# --- samples ------------------------------------------------------------------------------------


def test_samples_from_fixtures():
    samples = list(LongBench(tasks="all", data_dir=str(FIXTURES)).samples(char_ctx()))
    assert len(samples) == 42 and len({s.id for s in samples}) == 42
    by_task = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s)
    raw = {"chat": {}, "stop": {}}
    for task, group in by_task.items():
        raw["chat"][task] = {s.chat for s in group}
        raw["stop"][task] = {s.stop_newline for s in group}
        assert all(s.max_new_tokens == max_new_tokens()[task] for s in group)
        assert all(s.answer_prefix == "" for s in group)
    no_chat = {t for t, flags in raw["chat"].items() if flags == {False}}
    assert no_chat == {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
    assert {t for t, flags in raw["stop"].items() if flags == {True}} == {"samsum"}

    # Untruncated prompt: the template filled with the record, byte for byte.
    record = read_fixture("passage_count")[0]
    first = by_task["passage_count"][0]
    expected = (
        "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully "
        "read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In "
        "other words, how many non-repeating paragraphs are there in total?\n\n"
        + record["context"]
        + "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should "
        "only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: "
    )
    assert first.prompt == expected
    assert first.references == ["3"]
    assert first.id == f"passage_count/{record['_id']}"
    assert first.meta["length"] == record["length"] and first.meta["truncated"] is False
    assert by_task["trec"][0].meta["all_classes"] == read_fixture("trec")[0]["all_classes"]


def test_samples_per_task_and_e_ids():
    samples = list(
        LongBenchE(tasks=["qasper", "lcc"], data_dir=str(FIXTURES), samples_per_task=1).samples(char_ctx())
    )
    assert [s.task for s in samples] == ["qasper", "lcc"]
    assert samples[0].id == "qasper_e/" + read_fixture("qasper", "_e")[0]["_id"]


def test_middle_truncation_keeps_first_and_last_halves():
    bench = LongBench(tasks=["narrativeqa"], data_dir=str(FIXTURES), samples_per_task=1, max_prompt_tokens=41)
    full = prompt_templates()["narrativeqa"].format(**read_fixture("narrativeqa")[0])
    (sample,) = bench.samples(char_ctx())
    # one character per token, 41 -> halves of int(41 / 2) = 20
    assert sample.prompt == full[:20] + full[-20:]
    assert sample.prompt.startswith("You are given a stor") and sample.prompt.endswith(
        "the garden?\n\nAnswer:"
    )
    assert sample.meta["truncated"] is True


def test_truncation_limit_defaults_to_model_config():
    bench = LongBench(tasks=["narrativeqa"], data_dir=str(FIXTURES), samples_per_task=1)
    (short,) = bench.samples(char_ctx(max_prompt_tokens=60))
    assert len(short.prompt) == 60
    (untouched,) = bench.samples(char_ctx(max_prompt_tokens=100_000))
    assert untouched.meta["truncated"] is False


def test_truncation_with_the_real_tokenizer(smollm2_tokenizer):
    bench = LongBench(tasks=["hotpotqa"], data_dir=str(FIXTURES), samples_per_task=1, max_prompt_tokens=64)
    full = prompt_templates()["hotpotqa"].format(**read_fixture("hotpotqa")[0])
    (sample,) = bench.samples(
        PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2", max_prompt_tokens=7500)
    )
    n = len(smollm2_tokenizer.encode(sample.prompt, add_special_tokens=False))
    assert 60 <= n <= 66  # 2 x 32 tokens; re-tokenising at the seam may merge or split one
    assert sample.prompt.startswith("Answer the question based on the given passages.")
    assert sample.prompt.endswith("Question: " + read_fixture("hotpotqa")[0]["input"] + "\nAnswer:")
    assert "Passage 2:" in full and "Passage 2:" not in sample.prompt  # the middle went
    assert sample.chat is True  # the chat template is applied after truncation by the runner


def test_score_uses_meta_all_classes_and_first_line():
    bench = LongBench(tasks=["trec"], data_dir=str(FIXTURES))
    classes = read_fixture("trec")[0]["all_classes"]
    record = {
        "task": "trec",
        "prediction": " Date\nCity",
        "references": ["Date"],
        "meta": {"all_classes": classes},
    }
    assert bench.score(record) == {"score": 1.0}
    record["prediction"] = " Date or City"
    assert bench.score(record) == {"score": 0.5}


# --- loaders and errors -------------------------------------------------------------------------


def test_data_dir_may_be_the_folder_above_data(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qasper.jsonl").write_text((FIXTURES / "qasper.jsonl").read_text())
    samples = list(LongBench(tasks=["qasper"], data_dir=str(tmp_path)).samples(char_ctx()))
    assert len(samples) == 2


def test_missing_task_file_is_a_one_line_error(tmp_path):
    (tmp_path / "qasper.jsonl").write_text((FIXTURES / "qasper.jsonl").read_text())
    bench = LongBench(tasks=["qasper", "trec"], data_dir=str(tmp_path))
    with pytest.raises(UserError) as err:
        next(iter(bench.samples(char_ctx())))  # fails before the first sample, not after qasper
    assert "trec.jsonl" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: p])
def test_bad_data_dir_is_a_one_line_error(tmp_path, make):
    with pytest.raises(UserError) as err:
        list(LongBench(data_dir=str(make(tmp_path))).samples(char_ctx()))
    assert "data.zip" in str(err.value) and "\n" not in str(err.value)


def test_offline_without_data_says_both_ways(tmp_path):
    # conftest sets HF_HUB_OFFLINE=1 and nothing is cached under tmp_path.
    bench = LongBench(cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError) as err:
        list(bench.samples(char_ctx()))
    message = str(err.value)
    assert "\n" not in message
    assert "bench.data_dir=" in message and "huggingface.co/datasets/THUDM/LongBench" in message
    assert "network" in message


def test_download_is_unzipped_once(tmp_path, monkeypatch):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("qasper.jsonl", "qasper_e.jsonl"):
            z.write(FIXTURES / name, f"data/{name}")
    calls = []

    def fake_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(archive)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    cache = tmp_path / "cache"
    folder = longbench_loader.cached_data_dir(cache)
    assert calls == [("THUDM/LongBench", "data.zip", "dataset")]
    assert folder == cache / "data" and (folder / "qasper_e.jsonl").exists()
    assert longbench_loader.cached_data_dir(cache) == folder and len(calls) == 1  # cached: no second download
    samples = list(LongBenchE(tasks=["qasper"], cache_dir=str(cache)).samples(char_ctx()))
    assert len(samples) == 2


def test_hydra_configs_build_the_benchmarks():
    from hydra import compose, initialize_config_dir

    from eval.sample_loop import build_benchmark

    config_dir = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("config", overrides=["bench=longbench", "bench.tasks=[qasper,trec]"])
        bench = build_benchmark(cfg)
        assert isinstance(bench, LongBench) and bench.task_list == ["qasper", "trec"]
        cfg = compose("config", overrides=["bench=longbench_e"])
        bench = build_benchmark(cfg)
        assert isinstance(bench, LongBenchE) and len(bench.task_list) == 13 and bench.name == "longbench_e"
        cfg = compose("config", overrides=["bench=longbench", "bench.tasks=zh"])
        assert len(build_benchmark(cfg).task_list) == 5


def test_repeated_ids_get_a_stable_suffix_and_bad_json_is_a_user_error(tmp_path):
    line = (FIXTURES / "lcc.jsonl").read_text().splitlines()[0]
    (tmp_path / "lcc.jsonl").write_text(f"{line}\n{line}\n")
    ids = [s.id for s in LongBench(tasks=["lcc"], data_dir=str(tmp_path)).samples(char_ctx())]
    first = "lcc/" + json.loads(line)["_id"]
    assert ids == [first, first + "#2"]
    (tmp_path / "lcc.jsonl").write_text(f"{line}\n{{broken\n")
    with pytest.raises(UserError, match="lcc.jsonl:2"):
        list(LongBench(tasks=["lcc"], data_dir=str(tmp_path)).samples(char_ctx()))


@pytest.mark.parametrize("value", [0, -5, "many"])
def test_bad_numeric_options_are_user_errors(value):
    with pytest.raises(UserError, match="samples_per_task"):
        LongBench(samples_per_task=value)
