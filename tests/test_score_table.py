"""The comparison table `make run` prints, on synthetic run folders with hand-computed intervals.

With two samples the bootstrap means take only the values min, midpoint and max (with chances
1/4, 1/2, 1/4), so over 2000 resamples the 2.5th and 97.5th percentiles are the two samples
themselves; with one sample, or equal samples, the interval is the mean.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.score_table import format_score_table, write_niah_figure
from tests.run_folders import FIDELITY, make_run


def _niah(root: Path, method: str, budget: int | None, recalls: list[float]) -> Path:
    scores = [(f"niah/{i}", "niah", {"recall": v}) for i, v in enumerate(recalls)]
    meta = [{"length": 1000 * (1 + i % 2), "depth": 50.0 * (i // 2)} for i in range(len(recalls))]
    return make_run(
        root, bench="niah", method=method, budget=budget, scores=scores, headline="recall", meta=meta
    )


def _folders(root: Path) -> list[Path]:
    return [  # written out of order: the table sorts them
        _niah(root, "snapkv", 64, [0.2, 0.6]),
        _niah(root, "lava", 128, [1.0, 1.0]),
        _niah(root, "full", None, [1.0, 1.0, 1.0, 1.0]),
        _niah(root, "lava", 64, [0.0, 1.0]),
        _niah(root, "adakv", 64, [0.5]),
    ]


def test_table_of_niah_runs(tmp_path):
    expected = "\n".join(
        [
            "niah on tiny: recall per sample (higher is better), mean and 95% interval",
            "method  budget  n  recall    95% interval",
            "full         -  4   1.000  [1.000, 1.000]",
            "adakv       64  1   0.500  [0.500, 0.500]",
            "lava        64  2   0.500  [0.000, 1.000]",
            "lava       128  2   1.000  [1.000, 1.000]",
            "snapkv      64  2   0.400  [0.200, 0.600]",
        ]
    )
    assert format_score_table(_folders(tmp_path)) == expected


def test_one_table_per_bench_with_its_direction(tmp_path):
    niah = _niah(tmp_path, "full", None, [0.25, 0.75])
    fidelity = make_run(
        tmp_path,
        bench="fidelity",
        method="snapkv",
        budget=64,
        scores=[("f/0", "essays", {"kl": 0.1}), ("f/1", "code", {"kl": 0.3})],
        headline="kl",
        bench_target=FIDELITY,
    )
    expected = "\n".join(
        [
            "niah on tiny: recall per sample (higher is better), mean and 95% interval",
            "method  budget  n  recall    95% interval",
            "full         -  2   0.500  [0.250, 0.750]",
            "",
            "fidelity on tiny: kl per sample (lower is better), mean and 95% interval",
            "method  budget  n     kl    95% interval",
            "snapkv      64  2  0.200  [0.100, 0.300]",
        ]
    )
    assert format_score_table([niah, fidelity]) == expected


def test_niah_figure_of_the_folders(tmp_path):
    path = write_niah_figure(_folders(tmp_path / "runs"), tmp_path / "niah_grid.png")
    assert path == tmp_path / "niah_grid.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "bench, target, meta",
    [
        ("fidelity", FIDELITY, None),
        # code completion records a length but no depth: `make run` crashed (KeyError) on it
        ("code_completion", None, [{"length": 1024}]),
    ],
)
def test_no_niah_figure_without_niah_samples(tmp_path, bench, target, meta):
    extra = {"bench_target": target} if target else {"meta": meta}
    run = make_run(
        tmp_path,
        bench=bench,
        method="snapkv",
        budget=64,
        scores=[("s/0", "x", {"v": 0.1})],
        headline="v",
        **extra,
    )
    assert write_niah_figure([run], tmp_path / "niah_grid.png") is None
    assert not (tmp_path / "niah_grid.png").exists()


def test_percent_benchmark_with_fraction_records_prints_its_percent_scale(tmp_path):
    """InfiniteBench records hold 0/1 per sample and report percent: the table printed 0.3 [0.0, 0.7]
    for a run whose scores.json says 33.3. Hand-computed: 2 of 6 samples right = 33.3; the two
    tasks (3 samples each, 2/3 and 0/3 right) average 33.3 too."""

    def percent(records):
        per_task = {}
        for r in records:
            per_task.setdefault(r["task"], []).append(r["scores"]["score"])
        tasks = {t: {"num_samples": len(v), "score": 100 * sum(v) / len(v)} for t, v in per_task.items()}
        mean = sum(t["score"] for t in tasks.values()) / len(tasks)
        return {"score": mean, "headline_metric": "score", "num_samples": len(records), "unit": "percent",
                "per_task": tasks}  # fmt: skip

    scores = [(f"a{i}", "a", {"score": v}) for i, v in enumerate([1, 1, 0])]
    scores += [(f"b{i}", "b", {"score": 0}) for i in range(3)]
    run = make_run(
        tmp_path, bench="infinitebench", method="full", budget=None, scores=scores, aggregate=percent
    )
    line = format_score_table([run]).splitlines()[2]
    assert line.split()[:4] == ["full", "-", "6", "33.3"]
