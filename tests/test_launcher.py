"""Scale-out through Hydra: the SLURM launcher config composes, and a multirun through submitit's
local launcher (the same code path as SLURM, with local processes) writes the scores of plain runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRID = [
    "bench=niah",
    "bench.lengths=[300]",
    "bench.depths=[0,100]",
    "bench.max_new_tokens=12",
    "progress=false",
]

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")


def test_slurm_launcher_config_fields_are_overridable():
    from hydra import compose, initialize_config_dir

    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu-a100", "hydra.launcher.gpus_per_node=4",
                 "hydra.launcher.mem_gb=200", "hydra.launcher.timeout_min=30", "hydra.launcher.array_parallelism=8"]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.mem_gb) == ("gpu-a100", 4, 200)
    assert (launcher.timeout_min, launcher.array_parallelism) == (30, 8)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )


def _results(root: Path) -> dict[str, tuple[dict, list]]:
    out = {}
    for scores in sorted(root.rglob("scores.json")):
        folder = scores.parent
        preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        out[str(folder.relative_to(root))] = (
            json.loads(scores.read_text()),
            [(p["id"], p["prediction"], p["scores"]) for p in preds],
        )
    return out


def test_submitit_local_multirun_equals_plain_runs(tmp_path):
    plain, multi = tmp_path / "plain", tmp_path / "multi"
    for method in ("full", "snapkv"):
        done = _run([f"method={method}", "budget=64", f"output_root={plain}", *GRID])
        assert done.returncode == 0, done.stderr[-2000:]
    done = _run(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=15", "method=full,snapkv",
                 "budget=64", f"output_root={multi}", *GRID])  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    expected, got = _results(plain), _results(multi)
    assert len(expected) == 2 and set(got) == set(expected)
    for folder, (scores, predictions) in expected.items():
        assert got[folder][1] == predictions, folder
        assert got[folder][0] == scores, folder
