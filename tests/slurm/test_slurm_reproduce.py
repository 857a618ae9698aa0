"""`make reproduce-tables LAUNCHER=slurm` through a running SLURM scheduler (`make test-slurm`).

Needs the one-node cluster of scripts/slurm_local.sh (it sets SLURM_LOCAL_DIR); skipped otherwise,
so plain `make test` passes over it. The profile is configs/sweep/slurm_tiny.yaml: 2 methods x 1
budget on 12 NIAH samples in 2 shards (array tasks) of 6. The reference is the same profile run with
the local launcher; every SLURM run must give the same records (all fields but the per-sample
wall-clock timings), the same scores.json and a byte-identical results/ folder. The fault tests print
their job ids and sample counts (`pytest -s` shows them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = "slurm_tiny"
SAMPLES_PER_SHARD = 6
# What the one-node cluster can give a job (the launcher's defaults ask for a GPU and 64 GB).
CLUSTER_ARGS = ["hydra.launcher.mem_gb=1", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.gpus_per_node=null", "hydra.launcher.timeout_min=10"]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not os.environ.get("SLURM_LOCAL_DIR"), reason="needs a running scheduler: make test-slurm"
)


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")


def _reproduce(root: Path, results: Path, launcher: str) -> subprocess.Popen:
    """`make reproduce-tables` as a user runs it. `-o .venv/.installed`: the target that runs this test
    has just built the venv; a Makefile edited since must not reinstall it in the middle of a run."""
    args = ["--output-root", str(root), "--results", str(results), "--perf", str(root / "no-perf.csv")]
    if launcher == "slurm":
        args += [item for arg in CLUSTER_ARGS for item in ("--launcher-arg", arg)]
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "reproduce-tables",
               f"PROFILE={PROFILE}", f"LAUNCHER={launcher}", f"PY={sys.executable}", f"ARGS={' '.join(args)}"]  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _untimed(record: dict) -> dict:
    """A record without its measured wall-clock seconds (the only fields a rerun may change)."""
    return {k: v for k, v in record.items() if not k.endswith("_seconds")}


def _merged(root: Path) -> dict[str, tuple[dict, list[dict]]]:
    """Per unsharded run folder: scores.json and its records (timings dropped), in file order."""
    out = {}
    for scores in sorted(root.rglob("scores.json")):
        folder = scores.parent
        if "-shard" in folder.name:
            continue
        lines = (folder / "predictions.jsonl").read_text().splitlines()
        out[str(folder.relative_to(root))] = (
            json.loads(scores.read_text()),
            [_untimed(json.loads(line)) for line in lines],
        )
    return out


def _shard_ids(root: Path, shard: int) -> dict[str, list[str]]:
    """Per configuration: the ids of every complete line of shard ``shard``'s predictions, repeats kept."""
    out = {}
    for path in sorted(root.rglob(f"*-shard{shard}of2/predictions.jsonl")):
        ids = []
        for line in path.read_text().splitlines():
            try:
                ids.append(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                pass  # a line torn by the kill: not a finished sample
        out[path.parent.name.split("-")[0]] = ids
    return out


def _counts(root: Path, shard: int) -> str:
    return ", ".join(f"{name} {len(ids)}" for name, ids in _shard_ids(root, shard).items()) or "no folder"


def _array_tasks(root: Path) -> list[str]:
    """Job ids (`<array>_<task>`) submitit made folders for under the run's output root."""
    folder = root / "multirun" / ".submitit"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(
        (n for n in names if re.fullmatch(r"\d+_\d+", n)), key=lambda n: tuple(map(int, n.split("_")))
    )


def _squeue() -> dict[str, str]:
    done = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in done.stdout.splitlines())


def _wait(condition, what: str, timeout: float = 300, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _wait_queue_empty() -> None:
    _wait(lambda: not _squeue(), "the queue to empty", every=0.5)


def _task_of(root: Path, shard: int) -> str:
    """The newest array task id of shard ``shard`` (array task i runs shard i)."""
    tasks = [t for t in _array_tasks(root) if t.endswith(f"_{shard}")]
    return tasks[-1] if tasks else ""


def _job_state(job: str) -> str:
    done = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, check=True)
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout))
    return f"{fields.get('JobState')} Restarts={fields.get('Restarts')}"


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> tuple[dict, dict]:
    """The profile run with the local launcher: its merged records and the digests of its results/."""
    tmp = tmp_path_factory.mktemp("local")
    code, out = _finish(_reproduce(tmp / "out", tmp / "results", "local"))
    assert code == 0, out[-3000:]
    runs = _merged(tmp / "out")
    assert len(runs) == 2 and all(len(records) == 2 * SAMPLES_PER_SHARD for _, records in runs.values())
    return runs, _digests(tmp / "results")


def _assert_same_as_local(root: Path, results: Path, local: tuple[dict, dict]) -> None:
    runs, digests = local
    got = _merged(root)
    assert set(got) == set(runs)
    for folder, (scores, records) in runs.items():
        assert [r["id"] for r in got[folder][1]] == [r["id"] for r in records], folder  # sample order
        assert got[folder] == (scores, records), folder
    assert _digests(results) == digests  # tables, figures, claims: byte-identical


def _assert_each_sample_once(root: Path) -> None:
    for shard in range(2):
        for name, ids in _shard_ids(root, shard).items():
            assert len(ids) == len(set(ids)) == SAMPLES_PER_SHARD, (shard, name, ids)


def test_slurm_reproduction_equals_the_local_one(tmp_path, local):
    start = time.monotonic()
    code, out = _finish(_reproduce(tmp_path / "out", tmp_path / "results", "slurm"))
    assert code == 0, out[-3000:]
    tasks = _array_tasks(tmp_path / "out")
    print(f"\n[slurm] reproduction: array tasks {tasks}, {time.monotonic() - start:.0f} s, "
          f"{[_job_state(t) for t in tasks]}")  # fmt: skip
    assert len(tasks) == 2
    _assert_each_sample_once(tmp_path / "out")
    _assert_same_as_local(tmp_path / "out", tmp_path / "results", local)


def test_job_cancelled_halfway_resumes_when_resubmitted(tmp_path, local):
    root = tmp_path / "out"
    proc = _reproduce(root, tmp_path / "results", "slurm")
    _wait(
        lambda: min((len(i) for i in _shard_ids(root, 0).values()), default=0) >= 1, "shard 0's first sample"
    )
    job = _task_of(root, 0)
    before = _counts(root, 0)
    subprocess.run(["scancel", job], check=True)
    code, out = _finish(proc)
    assert code == 2 and "multirun(s) failed" in out, out[
        -3000:
    ]  # the driver saw the job end without a result
    _wait_queue_empty()  # shard 1 still runs: resubmitting before it ends would run it twice at once
    after = _counts(root, 0)
    state = _job_state(job)
    print(f"\n[slurm] scancel {job} with shard 0 at ({before}) samples; after the kill ({after}); {state}")
    assert state.startswith("CANCELLED")
    done = [len(ids) for ids in _shard_ids(root, 0).values()]
    assert done and all(1 <= n < SAMPLES_PER_SHARD for n in done), f"not cancelled halfway: {after}"
    code, out = _finish(_reproduce(root, tmp_path / "results", "slurm"))
    assert code == 0, out[-3000:]
    print(f"[slurm] resubmitted: array tasks {_array_tasks(root)}; shard 0 now ({_counts(root, 0)}), "
          f"shard 1 ({_counts(root, 1)})")  # fmt: skip
    _assert_each_sample_once(root)
    _assert_same_as_local(root, tmp_path / "results", local)


def test_shard_that_never_ran_stops_the_merge(tmp_path):
    root = tmp_path / "out"
    proc = _reproduce(root, tmp_path / "results", "slurm")
    # Cancelled as soon as it starts: killed while Python is still importing, before any output.
    job = _wait(lambda: next((j for j, s in _squeue().items() if j.endswith("_1") and s == "RUNNING"), None),
                "shard 1 to start", every=0.05)  # fmt: skip
    subprocess.run(["scancel", job], check=True)
    code, out = _finish(proc)
    assert code == 2 and "multirun(s) failed" in out, out[-3000:]
    _wait_queue_empty()
    print(f"\n[slurm] scancel {job} at its start ({_job_state(job)}); shard 0 ({_counts(root, 0)}), "
          f"shard 1 ({_counts(root, 1)})")  # fmt: skip
    assert not list(root.rglob("*-shard1of2")), (
        "shard 1 wrote a folder before the kill: not a shard that never ran"
    )
    merge = subprocess.run([sys.executable, "scripts/merge_shards.py", "--root", str(root)],
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    print(f"[slurm] merge_shards.py exit {merge.returncode}: {merge.stderr.strip()}")
    assert merge.returncode == 2
    assert merge.stderr.strip().splitlines() == [merge.stderr.strip()]  # one line
    assert re.search(r"incomplete shards of \S+: missing shard\(s\) 1 of 2 \(have 0\)", merge.stderr)
    assert not [p for p in root.rglob("config.yaml") if "-shard" not in p.parent.name]  # nothing merged


def test_requeued_job_resumes(tmp_path, local):
    root = tmp_path / "out"
    proc = _reproduce(root, tmp_path / "results", "slurm")
    _wait(
        lambda: min((len(i) for i in _shard_ids(root, 0).values()), default=0) >= 1, "shard 0's first sample"
    )
    job = _task_of(root, 0)
    before = _counts(root, 0)
    subprocess.run(["scontrol", "requeue", job], check=True)
    _wait(lambda: _squeue().get(job) == "PENDING", f"{job} to be pending again")
    after, state = _counts(root, 0), _job_state(job)
    done = [len(ids) for ids in _shard_ids(root, 0).values()]
    assert done and all(1 <= n < SAMPLES_PER_SHARD for n in done), f"not requeued halfway: {after}"
    # A requeued job may start again only 2 min later (SLURM's requeue delay): start it now.
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    code, out = _finish(proc)
    assert code == 0, out[-3000:]  # the driver waited through the requeue
    print(f"\n[slurm] scontrol requeue {job} with shard 0 at ({before}) samples; pending again with ({after}), "
          f"{state}; finished: {_job_state(job)}, shard 0 ({_counts(root, 0)})")  # fmt: skip
    array = job.split("_")[0]
    assert _array_tasks(root) == [f"{array}_0", f"{array}_1"]  # no new job: the same one ran again
    assert state == "PENDING Restarts=1" and _job_state(job) == "COMPLETED Restarts=1"
    _assert_each_sample_once(root)
    _assert_same_as_local(root, tmp_path / "results", local)
