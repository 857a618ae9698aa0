"""LongBench aggregation and tables against hand-computed numbers."""

import csv
import math

import pytest

from eval.benchmarks.longbench import LongBench, LongBenchE
from eval.benchmarks.longbench_scores import length_bucket

# Per-sample score given to every sample of a task (two samples each).
FULL_RUN = {
    # English: single-doc 30, multi-doc 60, summarization 20, few-shot 90, synthetic (0 + 80)/2 = 40
    "narrativeqa": 0.3,
    "qasper": 0.3,
    "multifieldqa_en": 0.3,
    "hotpotqa": 0.6,
    "2wikimqa": 0.6,
    "musique": 0.6,
    "gov_report": 0.2,
    "qmsum": 0.2,
    "multi_news": 0.2,
    "trec": 0.9,
    "triviaqa": 0.9,
    "samsum": 0.9,
    "passage_count": 0.0,
    "passage_retrieval_en": 0.8,
    # code (shared by both tables): (40 + 60) / 2 = 50
    "lcc": 0.4,
    "repobench-p": 0.6,
    # Chinese: 50, 10, 15, 25, 70
    "multifieldqa_zh": 0.5,
    "dureader": 0.1,
    "vcsum": 0.15,
    "lsht": 0.25,
    "passage_retrieval_zh": 0.7,
}


def records(task_scores, samples=2):
    return [
        {"id": f"{t}/{i}", "task": t, "scores": {"score": s}, "meta": {}}
        for t, s in task_scores.items()
        for i in range(samples)
    ]


def test_full_run_averages():
    out = LongBench(tasks="all").aggregate(records(FULL_RUN))
    assert out["per_task"]["vcsum"] == {"score": 15.0, "num_samples": 2}
    assert out["per_category"]["en"] == {
        "Single-Doc QA": 30.0,
        "Multi-Doc QA": 60.0,
        "Summarization": 20.0,
        "Few-shot Learning": 90.0,
        "Synthetic Tasks": 40.0,
        "Code Completion": 50.0,
    }
    assert out["per_category"]["zh"]["Synthetic Tasks"] == 70.0
    assert out["per_category"]["zh"]["Code Completion"] == 50.0
    # README Avg: mean of six categories. en: 290 / 6; zh: (50+10+15+25+70+50) / 6 = 220 / 6
    assert out["language_avg"] == {"en": 48.33, "zh": 36.67}
    # papers: (3*30 + 3*60 + 3*20 + 3*90 + 0 + 80 + 40 + 60) / 16 = 780 / 16
    assert out["avg_16"] == 48.75 and out["avg_16_missing"] == []
    # all 21 tasks: (780 + 170) / 21 = 45.238...
    assert out["score"] == 45.24
    assert out["num_samples"] == 42


def test_partial_run():
    out = LongBench().aggregate(
        [
            {"task": "qasper", "scores": {"score": 1.0}},
            {"task": "qasper", "scores": {"score": 0.0}},
            {"task": "hotpotqa", "scores": {"score": 1 / 3}},
            {"task": "trec", "scores": {"score": 1.0}},
        ]
    )
    assert {t: e["score"] for t, e in out["per_task"].items()} == {
        "qasper": 50.0,
        "hotpotqa": 33.33,
        "trec": 100.0,
    }
    assert out["score"] == 61.11  # (50 + 33.33 + 100) / 3
    assert out["avg_16"] is None and len(out["avg_16_missing"]) == 13
    assert out["language_avg"] == {"en": None, "zh": None}
    assert "zh" not in out["per_category"]  # no Chinese task ran


def test_code_tasks_alone_open_no_language_table():
    out = LongBench().aggregate(records({"lcc": 0.5}))
    assert out["per_category"] == {} and out["score"] == 50.0


def test_tables_written(tmp_path):
    bench = LongBench(tasks="all")
    paths = bench.write_artifacts(tmp_path, records(FULL_RUN))
    assert sorted(p.name for p in paths) == [
        "longbench_averages.csv",
        "longbench_averages.md",
        "longbench_tasks.csv",
        "longbench_tasks.md",
    ]
    rows = list(csv.DictReader((tmp_path / "longbench_tasks.csv").open()))
    assert len(rows) == 21 and rows[0] == {
        "task": "narrativeqa",
        "language": "en",
        "category": "Single-Doc QA",
        "samples": "2",
        "score": "30.00",
    }
    averages = {
        r["average"]: r["score"] for r in csv.DictReader((tmp_path / "longbench_averages.csv").open())
    }
    assert averages["Avg of the 16 English + code tasks (papers)"] == "48.75"
    assert averages["zh: Avg (6 categories, LongBench README)"] == "36.67"
    assert averages["Avg of the tasks run"] == "45.24"
    md = (tmp_path / "longbench_tasks.md").read_text().splitlines()
    assert md[0] == "| task | language | category | samples | score |"
    assert md[2] == "| narrativeqa | en | Single-Doc QA | 2 | 30.00 |"


@pytest.mark.parametrize(
    ("length", "bucket"), [(0, "0-4k"), (3999, "0-4k"), (4000, "4-8k"), (7999, "4-8k"), (8000, "8k+")]
)
def test_length_buckets(length, bucket):
    assert length_bucket(length) == bucket


def test_longbench_e_buckets(tmp_path):
    def rec(task, length, score):
        return {"task": task, "scores": {"score": score}, "meta": {"length": length}}

    recs = [
        rec("qasper", 100, 1.0),
        rec("qasper", 3999, 0.0),
        rec("qasper", 4000, 0.5),
        rec("qasper", 9000, 0.0),
        rec("lcc", 500, 0.2),
    ]
    out = LongBenchE().aggregate(recs)
    q = out["per_task"]["qasper"]
    assert (q["0-4k"], q["4-8k"], q["8k+"]) == (50.0, 50.0, 0.0)
    assert q["score"] == 37.5  # (1 + 0 + 0.5 + 0) / 4
    assert q["bucket_counts"] == {"0-4k": 2, "4-8k": 1, "8k+": 1}
    lcc = out["per_task"]["lcc"]
    assert lcc["0-4k"] == 20.0 and lcc["4-8k"] is None and lcc["8k+"] is None  # upstream: NaN
    assert out["per_bucket"] == {"0-4k": 35.0, "4-8k": 50.0, "8k+": 0.0}
    assert out["score"] == 28.75  # (37.5 + 20) / 2
    (csv_path, md_path) = LongBenchE().write_artifacts(tmp_path, recs)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["task", "samples", "0-4k", "4-8k", "8k+", "all"]
    assert rows[2] == ["lcc", "1", "20.00", "", "", "20.00"]
    assert rows[3] == ["Avg", "5", "35.00", "50.00", "0.00", "28.75"]
    assert "| lcc | 1 | 20.00 | n/a | n/a | 20.00 |" in md_path.read_text()


def test_empty_run_has_nan_score():
    assert math.isnan(LongBench().aggregate([])["score"])
