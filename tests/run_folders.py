"""Synthetic run folders, laid out exactly as the run core (:mod:`eval.run_folder`) writes them, for the report tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from eval.benchmarks.base import default_aggregate

# The fidelity benchmark class: its folders declare kl, nll_delta and attn_err lower-is-better.
FIDELITY = "eval.benchmarks.fidelity.benchmark.Fidelity"


def make_run(
    root: Path,
    *,
    bench: str,
    method: str,
    budget: int | None,
    scores: Sequence[tuple[str, str, dict[str, float]]],
    model: str = "tiny",
    aggregate: Any = None,
    headline: str = "score",
    kept: np.ndarray | None = None,
    commit: str = "abcdef1234567890",
    extra_scores: dict[str, Any] | None = None,
    meta: Sequence[dict[str, Any]] | None = None,
    digest: str = "0123abcd",
    bench_target: str | None = None,
    question: str | None = None,
) -> Path:
    """One run folder; ``scores`` lists ``(sample id, task, per-sample metrics)``.

    ``budget=None`` makes a budget-less folder name (``full-<hash>``), as the sweep writes.
    ``question="agnostic"`` records ``bench.question`` and names the folder ``...-agnostic-<hash>``,
    as a question-agnostic run does (collected as benchmark ``<bench>_agnostic``).
    ``aggregate`` maps records to scores.json (default: the base benchmark's mean per task).
    """
    setting = "-agnostic" if question == "agnostic" else ""
    name = f"{method}{setting}-{digest}" if budget is None else f"{method}-b{budget}{setting}-{digest}"
    run_dir = Path(root) / model / bench / name
    run_dir.mkdir(parents=True)
    records = [
        {
            "id": sid,
            "task": task,
            "prediction": "",
            "references": [],
            "meta": dict(meta[i]) if meta else {},
            "scores": dict(values),
        }
        for i, (sid, task, values) in enumerate(scores)
    ]
    if kept is not None:
        for record, array in zip(records, kept):
            record["kept_per_head"] = np.asarray(array).tolist()
        np.save(run_dir / "kept_per_head.npy", np.asarray(kept, dtype=np.int64))
    with (run_dir / "predictions.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    if aggregate is None:  # the base benchmark's means, list-valued per-sample fields left out
        numeric = [
            {**r, "scores": {k: v for k, v in r["scores"].items() if not isinstance(v, list)}}
            for r in records
        ]
        summary = default_aggregate(numeric, headline)
    else:
        summary = aggregate(records)
    summary.update(extra_scores or {})
    (run_dir / "scores.json").write_text(json.dumps(summary))
    config = {
        "model": {"name": model},
        "method": {"name": method},
        "bench": {
            "name": bench,
            **({"_target_": bench_target} if bench_target else {}),
            **({"question": question} if question else {}),
        },
        "budget": 64 if budget is None else budget,
        "seed": 42,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "run_meta.json").write_text(json.dumps({"git": {"commit": commit, "dirty": False}}))
    return run_dir


class ErrorBench:
    """Stands for a benchmark class that marks its metrics lower-is-better by a class attribute."""

    lower_is_better = ("err",)


class HeadlineLowerBench:
    lower_is_better = True


def per_sample(
    task: str, values: Sequence[float], metric: str = "score"
) -> list[tuple[str, str, dict[str, float]]]:
    """``(id, task, {metric: v})`` for each value; ids ``<task>0``, ``<task>1``, ..."""
    return [(f"{task}{i}", task, {metric: float(v)}) for i, v in enumerate(values)]


def toy_root(root: Path) -> Path:
    """Two tasks, two budgets, full cache budget-less. Hand-computed tables in test_tables.py."""
    make_run(
        root,
        bench="toy",
        method="full",
        budget=None,
        scores=per_sample("a", [1, 1]) + per_sample("b", [1, 0]),
    )
    make_run(
        root,
        bench="toy",
        method="snapkv",
        budget=64,
        scores=per_sample("a", [1, 0]) + per_sample("b", [0, 0]),
    )
    make_run(
        root, bench="toy", method="lava", budget=64, scores=per_sample("a", [1, 1]) + per_sample("b", [0, 1])
    )
    make_run(
        root,
        bench="toy",
        method="snapkv",
        budget=128,
        scores=per_sample("a", [1, 1]) + per_sample("b", [1, 0]),
    )
    make_run(
        root, bench="toy", method="lava", budget=128, scores=per_sample("a", [1, 0]) + per_sample("b", [1, 1])
    )
    for method, kl in (("full", 0.0), ("snapkv", 0.5), ("lava", 0.2)):
        scores = per_sample("code", [kl, kl + 0.1], metric="kl")
        make_run(
            root, bench="fid", method=method, budget=64, scores=scores, headline="kl", bench_target=FIDELITY
        )
    return root


def results_root(root: Path, model: str = "tiny", agnostic: bool = False) -> Path:
    """NIAH (with kept arrays) and fidelity (with per-layer errors) runs of the ablation methods.

    Runs go under ``root/<model>``; several calls with different ``model`` make a multi-model root.
    ``agnostic=True`` adds question-agnostic NIAH runs (benchmark ``niah_agnostic``) of every method
    and budget, drawn from a generator of their own so the other runs stay the same.
    """
    rng, agnostic_rng = np.random.default_rng(0), np.random.default_rng(1)
    grid = [(n, d) for n in (1000, 2000) for d in (0, 50, 100)]
    meta = [{"length": n, "depth": d} for n, d in grid]
    methods = ("full", "snapkv", "adakv", "lava", "lava_layer_only", "lava_head_only")
    for i, method in enumerate(methods):
        for budget in (None,) if method == "full" else (8, 16):
            p = 0.9 if budget is None else 0.2 + 0.1 * i
            niah = [(f"niah_L{n}_D{d}", "niah", {"recall": float(rng.random() < p)}) for n, d in grid]
            kept = None if budget is None else rng.integers(budget // 2, 2 * budget, size=(len(grid), 4, 2))
            make_run(
                root,
                bench="niah",
                method=method,
                budget=budget,
                scores=niah,
                headline="recall",
                meta=meta,
                kept=kept,
                model=model,
            )
            fid = [(f"code{j}", "code", {"kl": 0.0 if budget is None else float(rng.random() / (i + 1)),
                    "attn_err_per_layer": [] if budget is None else list(rng.random(4) / (i + 1))}) for j in range(5)]  # fmt: skip
            make_run(
                root,
                bench="fidelity",
                method=method,
                budget=budget,
                scores=fid,
                headline="kl",
                digest="fedcba98",
                bench_target=FIDELITY,
                model=model,
            )
            if agnostic:  # without the question the needle is found less often
                hits = [float(agnostic_rng.random() < 0.8 * p) for _ in grid]
                make_run(
                    root,
                    bench="niah",
                    method=method,
                    budget=budget,
                    scores=[(f"niah_L{n}_D{d}", "niah", {"recall": h}) for (n, d), h in zip(grid, hits)],
                    headline="recall",
                    meta=meta,
                    kept=kept,
                    model=model,
                    digest="a9a9a9a9",
                    question="agnostic",
                )
    return root
