"""The notebooks run top to bottom on results/ (no cell error, no empty table, under 2 minutes), in
both layouts: one model (tables flat in results/tables/) and several (results/tables/<model>/)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from run_folders import results_root

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[dev]'")

# The two models of the multi-model fixture; only the first also ran question-agnostic NIAH.
MODELS = ("gemma-tiny", "smol-tiny")


def execute(path: Path, results: Path, monkeypatch) -> tuple[float, str]:
    """Run ``path`` on ``results``: the seconds it took and the text of every output it printed."""
    monkeypatch.setenv("LAVA_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    seconds = time.perf_counter() - start
    texts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            texts += [v for k, v in output.get("data", {}).items() if k.startswith("text/")]
    return seconds, "\n".join(texts)


def _write(runs: Path, results: Path) -> Path:
    from eval.results import write_results

    perf = REPO / "results" / "perf" / "perf.csv"
    write_results(runs, results, profile="test", perf_csv=perf if perf.exists() else None)
    (results / "perf").mkdir()
    if perf.exists():
        (results / "perf" / "perf.csv").write_bytes(perf.read_bytes())
    return results


@pytest.fixture(scope="module")
def generated_results(tmp_path_factory):
    """One model: the flat layout."""
    base = tmp_path_factory.mktemp("nb")
    return _write(results_root(base / "runs"), base / "results")


@pytest.fixture(scope="module")
def two_model_results(tmp_path_factory):
    """Two models, the first with question-agnostic NIAH too: per-model folders, a
    summary_agnostic table and the question gap."""
    base = tmp_path_factory.mktemp("nb2")
    results_root(base / "runs", model=MODELS[0], agnostic=True)
    results_root(base / "runs", model=MODELS[1])
    return _write(base / "runs", base / "results")


def test_both_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} == {"compare_methods.ipynb", "budget.ipynb"}


def test_the_fixtures_have_the_two_layouts(generated_results, two_model_results):
    # Guards the tests below: the flat fixture is flat, the other holds one folder per model.
    flat = generated_results / "tables"
    assert (flat / "summary.csv").exists() and not [p for p in flat.iterdir() if p.is_dir()]
    nested = two_model_results / "tables"
    assert not (nested / "summary.csv").exists()
    assert {p.parent.name for p in nested.rglob("summary.csv")} == set(MODELS)
    assert [p.parent.name for p in nested.rglob("summary_agnostic.csv")] == [MODELS[0]]
    assert (nested / MODELS[0] / "niah_agnostic_budget.csv").exists()
    assert (nested / "question_gap.csv").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_generated_results(path, generated_results, monkeypatch):
    seconds, text = execute(path, generated_results, monkeypatch)
    assert seconds < 120
    assert "tiny: niah" in text  # the single model, named from the tables' headers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_two_models(path, two_model_results, monkeypatch):
    seconds, text = execute(path, two_model_results, monkeypatch)
    assert seconds < 120
    # every model gets its own tables, and the agnostic benchmark is shown with its model
    assert all(f"{model}: niah" in text for model in MODELS)
    assert f"{MODELS[0]}: niah_agnostic" in text and f"{MODELS[1]}: niah_agnostic" not in text
    if path.stem == "compare_methods":
        assert f"{MODELS[0]}: `summary_agnostic`" in text
        assert all(f"{model}: `summary`" in text for model in MODELS)
        assert "aware minus agnostic" in text  # the question gap's header


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_committed_results(path, monkeypatch):
    # Either layout: results/tables/summary.csv (one model) or results/tables/<model>/summary.csv.
    if not any((REPO / "results" / "tables").rglob("summary.csv")):
        pytest.skip("results/tables is not committed yet (make reproduce-tables writes it)")
    assert execute(path, REPO / "results", monkeypatch)[0] < 120


def _empty_summary(summary: Path) -> None:
    """Keep the provenance lines and the column names of ``summary``, drop its rows."""
    summary.write_text(
        "".join(
            line + "\n"
            for line in summary.read_text().splitlines()
            if line.startswith("#") or line.startswith("budget")
        )
    )


def test_an_empty_table_fails_the_notebook(generated_results, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "results"
    shutil.copytree(generated_results, broken)
    _empty_summary(broken / "tables" / "summary.csv")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="empty"):
        execute(REPO / "notebooks" / "compare_methods.ipynb", broken, monkeypatch)


def test_an_empty_agnostic_summary_fails_the_notebook(two_model_results, tmp_path, monkeypatch):
    # The per-model layout: the notebook reads summary_agnostic.csv too, and checks it has rows.
    import shutil

    broken = tmp_path / "results"
    shutil.copytree(two_model_results, broken)
    _empty_summary(broken / "tables" / MODELS[0] / "summary_agnostic.csv")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="summary_agnostic.csv is empty"):
        execute(REPO / "notebooks" / "compare_methods.ipynb", broken, monkeypatch)
