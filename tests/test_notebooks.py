"""The notebooks run top to bottom on results/ (no cell error, no empty table, under 2 minutes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from run_folders import results_root

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]'")


def execute(path: Path, results: Path, monkeypatch) -> float:
    monkeypatch.setenv("LAVA_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def generated_results(tmp_path_factory):
    from eval.results import write_results

    base = tmp_path_factory.mktemp("nb")
    perf = REPO / "results" / "perf" / "perf.csv"
    write_results(
        results_root(base / "runs"),
        base / "results",
        profile="test",
        perf_csv=perf if perf.exists() else None,
    )
    (base / "results" / "perf").mkdir()
    if perf.exists():
        (base / "results" / "perf" / "perf.csv").write_bytes(perf.read_bytes())
    return base / "results"


def test_both_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} == {"compare_methods.ipynb", "budget.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_generated_results(path, generated_results, monkeypatch):
    assert execute(path, generated_results, monkeypatch) < 120


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_committed_results(path, monkeypatch):
    if not (REPO / "results" / "tables" / "summary.csv").exists():
        pytest.skip("results/tables is not committed yet (make reproduce-tables writes it)")
    assert execute(path, REPO / "results", monkeypatch) < 120


def test_an_empty_table_fails_the_notebook(generated_results, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "results"
    shutil.copytree(generated_results, broken)
    summary = broken / "tables" / "summary.csv"
    summary.write_text(
        "".join(
            line + "\n"
            for line in summary.read_text().splitlines()
            if line.startswith("#") or line.startswith("budget")
        )
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="empty"):
        execute(REPO / "notebooks" / "compare_methods.ipynb", broken, monkeypatch)
