"""The notebooks run top to bottom on generated data and draw their figures.

They are executed with nbclient in a fresh kernel with ``PANNUKE_NOTEBOOK_FAST=1`` (tiny data and
training) and without ``PANNUKE_DATA_DIR`` (generated data).
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from pannuke_hf import constants  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: int = 600
) -> nbformat.NotebookNode:
    """Run a notebook in a new kernel; returns it with its outputs (raises on the first error)."""
    monkeypatch.setenv("PANNUKE_NOTEBOOK_FAST", "1")
    monkeypatch.delenv("PANNUKE_DATA_DIR", raising=False)
    monkeypatch.setenv("PANNUKE_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend must draw
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]


def count_images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(notebook))


def all_text(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for out in outputs(notebook):
        parts.append(out.get("text", ""))
        for mime in ("text/plain", "text/markdown", "text/html"):
            parts.append(str(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["01_explore_pannuke.ipynb", "02_train_evaluate_predict.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_exploration_notebook_runs(tmp_path, monkeypatch):
    notebook = execute("01_explore_pannuke.ipynb", tmp_path, monkeypatch)
    assert not [out for out in outputs(notebook) if out.output_type == "error"]
    # patch grid, patches per tissue, class composition, nucleus sizes, instance outlines,
    # true vs recovered nucleus outlines, per-tissue PQ bars
    assert count_images(notebook) == 7
    text = all_text(notebook)
    assert "bPQ" in text and "mPQ" in text
    # the statistics table names every class correctly
    for name in constants.CLASS_FULL_NAMES:
        assert f"| {name} |" in text, name
    assert "fold3" in text  # the three folds were loaded


@pytest.mark.slow
def test_train_evaluate_predict_notebook_runs(tmp_path, monkeypatch):
    notebook = execute("02_train_evaluate_predict.ipynb", tmp_path, monkeypatch, timeout=900)
    assert not [out for out in outputs(notebook) if out.output_type == "error"]
    # curves, confusion matrix, IoU/Dice bars, predictions vs ground truth, error maps, tiled mosaic,
    # true vs predicted nucleus outlines, per-tissue PQ bars
    assert count_images(notebook) == 8
    output = tmp_path / "output"
    assert (output / "trainer_state.json").is_file() and (output / "model.safetensors").is_file()
    assert (output / "predictions" / "mosaic_labels.png").is_file()
    for suffix in ("instances.png", "nuclei.csv", "nuclei.geojson"):
        assert (output / "predictions" / f"mosaic_{suffix}").is_file(), suffix
    text = all_text(notebook)
    assert "mIoU" in text and "bPQ" in text and "F1_detection" in text
    for name in constants.CLASS_NAMES:  # the class-count table of `pannuke-hf predict`
        assert name in text
