"""RULER benchmark plumbing: config, task selection, sample cache, scoring, tables."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from eval.benchmarks.base import PromptContext
from eval.benchmarks.ruler import Ruler
from eval.benchmarks.ruler import benchmark as ruler_benchmark
from eval.benchmarks.ruler.cache import cache_file
from eval.sample_loop import build_benchmark, build_prompt_ids
from lava.errors import UserError
from lava.models import as_spec

REPO = Path(__file__).resolve().parents[1]
OFFLINE = [
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multikey_2",
    "niah_multikey_3",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
]


def build(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose("config", overrides=["bench=ruler", *overrides])
    return build_benchmark(cfg)  # as the runner builds it (bench.question is the run's, not the class's)


def test_config_defaults_and_task_selection():
    bench = build()
    assert bench.name == "ruler" and bench.task_names == OFFLINE and bench.lengths == [2048]
    assert build("bench.tasks=all").task_names == [*OFFLINE, "qa_1", "qa_2"]
    assert build("bench.tasks=offline").task_names == OFFLINE
    custom = build("bench.tasks=[vt,fwe]", "bench.lengths=[4096,8192]", "bench.num_samples=3")
    assert custom.task_names == ["vt", "fwe"] and custom.lengths == [4096, 8192] and custom.num_samples == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tasks": ["niah_single_9"]}, "unknown RULER task"),
        ({"tasks": ["vt", "vt"]}, "twice"),
        ({"lengths": [100]}, "at least 256"),
        ({"lengths": ["long"]}, "list of token counts"),
        ({"num_samples": 0}, "positive"),
    ],
)
def test_bad_options_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        Ruler(**kwargs)


@pytest.fixture
def cache_dir(monkeypatch, tmp_path, smollm2_tokenizer):
    monkeypatch.setenv("LAVA_BENCH_CACHE", str(tmp_path))  # after the tokenizer is loaded from the real cache
    return tmp_path


def ctx_for(tokenizer, seed=42):
    return PromptContext(tokenizer=tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500, seed=seed)


def test_samples_are_cached_per_task_length_and_seed(cache_dir, smollm2_tokenizer, monkeypatch):
    bench = Ruler(tasks=["niah_single_1", "fwe"], lengths=[512, 768], num_samples=2)
    first = list(bench.samples(ctx_for(smollm2_tokenizer)))
    assert [s.id for s in first] == [
        "niah_single_1_L512_0",
        "niah_single_1_L512_1",
        "fwe_L512_0",
        "fwe_L512_1",
        "niah_single_1_L768_0",
        "niah_single_1_L768_1",
        "fwe_L768_0",
        "fwe_L768_1",
    ]
    files = sorted(p.name for p in (cache_dir / "ruler").iterdir())
    assert (
        len(files) == 4
        and files[0].startswith("fwe_L512_seed42_")
        and files[-1].startswith("niah_single_1_L768")
    )

    def no_generation(*args, **kwargs):
        raise AssertionError("samples should come from the cache")

    monkeypatch.setattr(ruler_benchmark, "make_generator", no_generation)
    assert list(bench.samples(ctx_for(smollm2_tokenizer))) == first
    # A different seed is a different cache file (and needs generation).
    with pytest.raises(AssertionError, match="from the cache"):
        list(bench.samples(ctx_for(smollm2_tokenizer, seed=1)))


def test_cache_extends_to_more_samples_and_matches_fresh_generation(cache_dir, smollm2_tokenizer):
    ctx = ctx_for(smollm2_tokenizer)
    list(Ruler(tasks=["vt"], lengths=[1024], num_samples=1).samples(ctx))
    extended = list(Ruler(tasks=["vt"], lengths=[1024], num_samples=2).samples(ctx))
    fresh = list(Ruler(tasks=["vt"], lengths=[1024], num_samples=2, cache=False).samples(ctx))
    assert extended == fresh
    path = next((cache_dir / "ruler").glob("vt_L1024_seed42_*.jsonl"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["vt_L1024_0", "vt_L1024_1"]
    assert json.dumps(rows[0], ensure_ascii=False) == path.read_text().splitlines()[0]  # byte-stable rows


def test_cache_key_follows_the_chat_template_choice(cache_dir, smollm2_tokenizer):
    ctx = ctx_for(smollm2_tokenizer)
    chat = list(Ruler(tasks=["niah_single_1"], lengths=[512], num_samples=1).samples(ctx))[0]
    plain = list(Ruler(tasks=["niah_single_1"], lengths=[512], num_samples=1, chat=False).samples(ctx))[0]
    assert len(list((cache_dir / "ruler").iterdir())) == 2
    assert not plain.chat and chat.chat
    # Without the ~30-token chat wrapper the haystack grows.
    assert plain.meta["haystack_size"] > chat.meta["haystack_size"]
    spec = as_spec(yaml.safe_load((REPO / "configs" / "model" / "smollm2-135m.yaml").read_text()))
    for s in (chat, plain):
        assert (
            len(build_prompt_ids(s, smollm2_tokenizer, spec)) + s.max_new_tokens
            == s.meta["length_tokens"]
            <= 512
        )


def test_a_damaged_cache_file_is_regenerated(cache_dir, smollm2_tokenizer):
    ctx = ctx_for(smollm2_tokenizer)
    good = list(Ruler(tasks=["fwe"], lengths=[512], num_samples=1).samples(ctx))
    path = next((cache_dir / "ruler").glob("fwe_*.jsonl"))
    path.write_text("{not json\n")
    assert list(Ruler(tasks=["fwe"], lengths=[512], num_samples=1).samples(ctx)) == good
    assert cache_file("fwe", 512, 42, path.stem.rsplit("_", 1)[1]) == path


def record(task, length, prediction, references):
    return {"task": task, "prediction": prediction, "references": references, "meta": {"length": length}}


RECORDS = [
    record("vt", 4096, "AAA BBB", ["AAA", "BBB"]),  # 100
    record("vt", 4096, "nothing", ["AAA", "BBB"]),  # 0    -> vt@4096 = 50
    record("vt", 8192, "ccc ddd", ["CCC", "DDD"]),  # 100  -> vt@8192 = 100
    record("niah_single_1", 4096, " 1234567.", ["1234567"]),  # 100
    record("niah_single_1", 4096, "\x00 7654321 ", ["1234567", "7654321"]),  # 50 -> 75
    record("niah_single_1", 8192, "", ["1"]),  # 0
    record("niah_single_1", 8192, "1", ["1"]),  # 100
    record("niah_single_1", 8192, "2", ["1"]),  # 0
    record("niah_single_1", 8192, "3", ["1"]),  # 0    -> 25
]


def test_aggregate_is_the_mean_over_tasks_and_lengths():
    scores = Ruler().aggregate(RECORDS)
    assert scores["per_task"]["vt"]["by_length"] == {"4096": 50.0, "8192": 100.0}
    assert scores["per_task"]["niah_single_1"]["by_length"] == {"4096": 75.0, "8192": 25.0}
    assert scores["per_length"] == {"4096": 62.5, "8192": 62.5}
    assert scores["score"] == 62.5  # (50 + 100 + 75 + 25) / 4
    assert scores["per_task"]["vt"]["score"] == 75.0
    assert scores["per_task"]["niah_single_1"]["nulls"] == {"4096": "0/2", "8192": "1/4"}
    assert scores["tasks"] == ["niah_single_1", "vt"]  # RULER's task order
    assert scores["num_samples"] == 9


def test_score_cleans_the_prediction_and_matches_all_references():
    bench = Ruler()
    assert bench.score(record("niah_multivalue", 4096, "1\x012", ["1", "2", "3", "4"]))["score"] == 50.0
    assert bench.headline_metric() == "score"
    assert set(bench.score(RECORDS[0])) == {"score", "string_match_all"}


def test_write_artifacts_tables(tmp_path):
    paths = Ruler().write_artifacts(tmp_path, RECORDS)
    assert [p.name for p in paths] == ["ruler_scores.csv", "ruler_scores.md"]
    table = pd.read_csv(paths[0], index_col="task")
    assert list(table.columns) == ["4096", "8192", "avg"]
    assert table.loc["vt"].tolist() == [50.0, 100.0, 75.0]
    assert table.loc["average"].tolist() == [62.5, 62.5, 62.5]
    markdown = paths[1].read_text()
    assert "| task | 4096 | 8192 | avg |" in markdown
    assert "| niah_single_1 | 75.00 | 25.00 | 50.00 |" in markdown
    assert Ruler().write_artifacts(tmp_path, []) == []
