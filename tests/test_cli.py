"""End-to-end runs of ``run.py``: resume after SIGKILL, and one-line errors for bad input."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRID = ["bench.lengths=[300,400,500]", "bench.depths=[0,50,100]", "bench.max_new_tokens=12", "progress=false"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="2")
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _run(args, timeout=600):
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run_dir(root: Path) -> Path:
    (run_dir,) = [p.parent for p in root.rglob("predictions.jsonl")]
    return run_dir


def _snapshot(root: Path) -> dict:
    return {str(p): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted full-cache run of the small grid."""
    root = tmp_path_factory.mktemp("ref")
    result = _run(["method=full", f"output_root={root}", *GRID])
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def _predictions(root: Path) -> list[dict]:
    return [json.loads(line) for line in (_run_dir(root) / "predictions.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, reference_run):
    root = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "run.py", "method=full", f"output_root={root}", *GRID],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once some but not all samples are written
        files = list(root.rglob("predictions.jsonl"))
        if files and 2 <= len(files[0].read_text().splitlines()) < 9:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(_predictions(root))
    assert 2 <= written < 9, "the kill should land mid-run"
    # Simulate the worst moment: a kill in the middle of writing a line.
    with open(_run_dir(root) / "predictions.jsonl", "a") as f:
        f.write('{"id": "niah_L500_D100", "task": "ni')
    result = _run(["method=full", f"output_root={root}", *GRID])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recovered" in result.stdout
    resumed, reference = _predictions(root), _predictions(reference_run)
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in reference)  # each sample exactly once
    assert len(resumed) == 9
    by_id = {r["id"]: r for r in reference}
    for r in resumed:
        assert r["prediction"] == by_id[r["id"]]["prediction"]
    scores = json.loads((_run_dir(root) / "scores.json").read_text())
    ref_scores = json.loads((_run_dir(reference_run) / "scores.json").read_text())
    assert scores["score"] == ref_scores["score"] and scores["metrics"] == ref_scores["metrics"]


def test_rerun_skips_finished_samples(reference_run):
    before = (_run_dir(reference_run) / "predictions.jsonl").read_text()
    result = _run(["method=full", f"output_root={reference_run}", *GRID])
    assert result.returncode == 0
    assert "(0 new)" in result.stdout
    assert (_run_dir(reference_run) / "predictions.jsonl").read_text() == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["method=nope"], "Could not find 'method/nope'"),
        (["bench=nope"], "Could not find 'bench/nope'"),
        (["model=nope"], "Could not find 'model/nope'"),
        (["budget=0"], "budget=0 is invalid"),
        (["budget=-5"], "budget=-5 is invalid"),
        (["model.path=/does/not/exist"], "model.path=/does/not/exist does not exist"),
        (["model=llama-3.1-8b-instruct"], "cannot load 'meta-llama/Llama-3.1-8B-Instruct'"),
        (["method=lava", "budget=16"], "must exceed method.window"),
    ],
)
def test_bad_input_one_line_error(reference_run, args, message):
    before = _snapshot(reference_run)
    result = _run([f"output_root={reference_run}", *GRID, *args], timeout=300)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    if not args[0].startswith(("method=", "bench=", "model=nope")) or "budget" in args[-1]:
        assert len([line for line in result.stderr.strip().splitlines() if line.strip()]) == 1
    assert _snapshot(reference_run) == before


def test_corrupted_middle_line_is_reported_not_counted(tmp_path, reference_run):
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(reference_run, root)
    path = _run_dir(root) / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3][:20] + "\n"
    path.write_text("".join(lines))
    before = _snapshot(root)
    result = _run(["method=full", f"output_root={root}", *GRID])
    assert result.returncode != 0
    assert "line 4 is corrupted" in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(root) == before
