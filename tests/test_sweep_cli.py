"""Sweeps through ``run.py``: same run folders as single runs (resumable both ways), SIGKILL, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from eval.runner import run

REPO = Path(__file__).resolve().parents[1]
GRID = ["bench.lengths=[300,400,500]", "bench.depths=[0,50,100]", "bench.max_new_tokens=12", "progress=false"]
SWEEP = ["methods=[full,snapkv,lava]", "budgets=[64]"]
TIMING_KEYS = {"prefill_seconds", "scoring_seconds", "allocation_seconds", "decode_seconds"}


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=[*GRID, *overrides])


def _cli(args, timeout=600):
    from tests.test_cli import _env

    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "predictions.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def _folders(root: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in root.rglob("predictions.jsonl")}


def test_sweep_and_single_runs_share_folders(tmp_path):
    single_root, sweep_root = tmp_path / "single", tmp_path / "sweep"
    # A single run of 2 samples; the sweep continues its folder to 3 and starts the others.
    run(_cfg("method=snapkv", "budget=64", "limit=2", f"output_root={sweep_root}"))
    before = (next(iter(_folders(sweep_root).values())) / "predictions.jsonl").read_text()
    summary = run(
        _cfg("methods=[full,snapkv,lava]", "budgets=[64,128]", "limit=3", f"output_root={sweep_root}")
    )
    assert [r.new_samples for r in summary.runs] == [3, 1, 3, 3, 3]  # full, snapkv 64 (resumed), ...
    folders = _folders(sweep_root)
    assert sorted(folders) == sorted(r.run_dir.name for r in summary.runs)
    assert sum(name.startswith("full-") for name in folders) == 1  # one full cache whatever the budgets
    snap = folders[summary.runs[1].run_dir.name]
    assert (snap / "predictions.jsonl").read_text().startswith(before)
    # The single run of every configuration resumes the sweep's folder with nothing to do ...
    for method, budget in [("full", 999), ("lava", 128)]:
        again = run(_cfg(f"method={method}", f"budget={budget}", "limit=3", f"output_root={sweep_root}"))
        assert again.new_samples == 0 and again.run_dir.name in folders
    # ... and a single run from scratch writes the same folder: same name, files, contents.
    for method, budget in [("full", 64), ("lava", 128)]:
        single = run(_cfg(f"method={method}", f"budget={budget}", "limit=3", f"output_root={single_root}"))
        swept = folders[single.run_dir.name]
        assert sorted(p.name for p in single.run_dir.iterdir()) == sorted(p.name for p in swept.iterdir())
        config = (single.run_dir / "config.yaml").read_text().replace(str(single_root), str(sweep_root))
        assert config == (swept / "config.yaml").read_text()  # the output root aside
        for name in ("method.json", "scores.json"):
            assert (single.run_dir / name).read_bytes() == (swept / name).read_bytes(), name
        assert _records(single.run_dir) == _records(swept)
        if method != "full":
            assert np.array_equal(
                np.load(single.run_dir / "kept_per_head.npy"), np.load(swept / "kept_per_head.npy")
            )
        assert _records(swept)[0]["cache_bytes"] > 0  # recorded for the full cache too


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref-sweep")
    result = _cli([*SWEEP, f"output_root={root}", *GRID])
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def test_sigkill_mid_sweep_then_rerun(tmp_path, reference_sweep):
    root = tmp_path / "killed"
    from tests.test_cli import _env

    proc = subprocess.Popen(
        [sys.executable, "run.py", *SWEEP, f"output_root={root}", *GRID],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some folders hold a few samples
        counts = [len(p.read_text().splitlines()) for p in root.rglob("predictions.jsonl")]
        if counts and 3 <= max(counts) < 9:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    counts = [len(p.read_text().splitlines()) for p in root.rglob("predictions.jsonl")]
    assert counts and max(counts) < 9, "the kill should land mid-sweep"
    result = _cli([*SWEEP, f"output_root={root}", *GRID])
    assert result.returncode == 0, result.stderr[-2000:]
    killed, reference = _folders(root), _folders(reference_sweep)
    assert sorted(killed) == sorted(reference) and len(killed) == 3
    for name, folder in killed.items():
        ids = [r["id"] for r in _records(folder)]
        assert len(ids) == 9 and len(set(ids)) == 9, name  # each sample exactly once
        ours = json.loads((folder / "scores.json").read_text())
        theirs = json.loads((reference[name] / "scores.json").read_text())
        assert ours["score"] == theirs["score"] and ours["metrics"] == theirs["metrics"], name


@pytest.mark.parametrize(
    "args, message",
    [
        (["methods=[snapkv,nope]"], "unknown method 'nope'"),
        (["methods=[snapkv]", "budgets=[0]"], "budgets=[0] is invalid"),
        (["methods=all", "max_decode_batch=0"], "max_decode_batch=0 is invalid"),
    ],
)
def test_bad_sweep_input_one_line_error(tmp_path, args, message):
    result = _cli([*args, f"output_root={tmp_path}", *GRID])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert not any(tmp_path.iterdir())


def test_merged_shards_hold_the_files_of_a_single_run(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from merge_shards import merge

    shards = [
        run(
            _cfg("method=snapkv", "budget=64", f"shard={i}", "num_shards=2", f"output_root={tmp_path}")
        ).run_dir
        for i in range(2)
    ]
    single = run(_cfg("method=snapkv", "budget=64", f"output_root={tmp_path / 'single'}")).run_dir
    scores = merge(shards, tmp_path / "merged")
    assert scores["num_samples"] == 9
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(p.name for p in single.iterdir())
    kept = np.load(tmp_path / "merged" / "kept_per_head.npy")
    assert kept.shape == np.load(single / "kept_per_head.npy").shape
