"""The benchmark contract declared on ``eval.benchmarks.base.Benchmark`` and the one unit rule:
each benchmark declares its unit and lower-is-better metrics, every run writes them into
scores.json, and ``eval.collect.Run`` reads them back (from the class for folders written before)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml
from run_folders import FIDELITY, make_run, per_sample

from eval.benchmarks.base import Benchmark
from eval.checks import UNITS
from eval.collect import find_runs

REPO = Path(__file__).resolve().parents[1]
BENCH_CONFIGS = sorted((REPO / "configs" / "bench").glob("*.yaml"))
# Upstream reports RULER, InfiniteBench and LongBench(-E) task scores on a 0-100 scale; the code
# completion headline is LongBench's lcc score, round(100 * mean, 2). NIAH recall and the fidelity
# measures are fractions of 1 (or nats).
PERCENT = {"ruler", "infinitebench", "longbench", "longbench_e", "code_completion"}


def bench_class(path: Path) -> type[Benchmark]:
    module, _, name = yaml.safe_load(path.read_text())["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=[p.stem for p in BENCH_CONFIGS])
def test_every_benchmark_declares_its_unit(path):
    cls = bench_class(path)
    assert issubclass(cls, Benchmark)
    assert cls.unit in UNITS
    assert (cls.unit == "percent") == (yaml.safe_load(path.read_text())["name"] in PERCENT)


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=[p.stem for p in BENCH_CONFIGS])
def test_teacher_forced_benchmarks_implement_their_entry_points(path):
    cls = bench_class(path)
    own = cls.run_sample is not Benchmark.run_sample and cls.run_prefilled is not Benchmark.run_prefilled
    assert own == cls.teacher_forced


def test_only_fidelity_declares_lower_is_better_metrics():
    declared = {p.stem: bench_class(p).lower_is_better for p in BENCH_CONFIGS}
    assert declared.pop("fidelity") == {"kl", "nll_delta", "attn_err"}
    assert all(names == frozenset() for names in declared.values())


class Toy(Benchmark):
    name = "toy"

    def samples(self, ctx):
        return []

    def score(self, record):
        return record["scores"]


class PercentToy(Toy):
    unit = "percent"
    lower_is_better = frozenset({"err"})


def test_scores_json_adds_the_declarations():
    records = [{"task": "t", "scores": {"score": 1.0}}, {"task": "t", "scores": {"score": 0.0}}]
    out = Toy().scores_json(records)
    assert out["score"] == 0.5 and out["unit"] == "fraction" and out["lower_is_better"] == []
    out = PercentToy().scores_json(records)
    assert out["unit"] == "percent" and out["lower_is_better"] == ["err"]
    with pytest.raises(NotImplementedError):
        Toy().run_sample(None, None, [], None)


def test_run_unit_from_scores_json_then_the_class_then_fraction(tmp_path):
    ruler = "eval.benchmarks.ruler.benchmark.Ruler"
    make_run(
        tmp_path,
        bench="a",
        method="x",
        budget=8,
        scores=per_sample("t", [1]),
        extra_scores={"unit": "percent"},
    )
    make_run(tmp_path, bench="b", method="x", budget=8, scores=per_sample("t", [1]), bench_target=ruler)
    make_run(tmp_path, bench="c", method="x", budget=8, scores=per_sample("t", [1]))
    make_run(
        tmp_path, bench="d", method="x", budget=8, scores=per_sample("t", [1]), bench_target="no.such.Class"
    )
    units = {run.bench: run.unit for run in find_runs(tmp_path)}
    assert units == {"a": "percent", "b": "percent", "c": "fraction", "d": "fraction"}


def test_lower_is_better_is_read_from_the_declaration_only(tmp_path):
    kl = per_sample("t", [0.1], metric="kl")
    make_run(tmp_path, bench="fid", method="x", budget=8, scores=kl, headline="kl", bench_target=FIDELITY)
    make_run(tmp_path, bench="old", method="x", budget=8, scores=kl, headline="kl",
             extra_scores={"lower_is_better": ["kl"]})  # fmt: skip
    make_run(tmp_path, bench="other", method="x", budget=8, scores=kl, headline="kl")
    lower = {run.bench: run.lower_is_better for run in find_runs(tmp_path)}
    assert lower == {"fid": True, "old": True, "other": False}  # a metric's name alone decides nothing


def test_a_finished_run_folder_declares_unit_and_direction(tmp_path):
    from omegaconf import OmegaConf

    from eval.run_folder import finish_run

    records = [{"id": "a", "task": "t", "scores": {"err": 0.5}, "prompt_tokens": 3, "new_tokens": 1}]

    class Err(PercentToy):
        def headline_metric(self):
            return "err"

    cfg = OmegaConf.create({"model": {"name": "m"}, "bench": {"name": "toy"}, "method": {"name": "full"}})
    finish_run(tmp_path, cfg, Err(), records, records, 1.0, "cpu")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["unit"] == "percent" and scores["lower_is_better"] == ["err"] and scores["score"] == 0.5
