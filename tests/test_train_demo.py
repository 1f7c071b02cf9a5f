"""The built-in demo end to end: `python train.py` with no arguments (minutes: marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_reaches_70_percent_miou(tmp_path):
    # Every cache inside tmp_path: the generated folds ($PANNUKE_HF_DEMO_CACHE, keyed on the
    # generator's code) and the Arrow dataset (HF_DATASETS_CACHE); nothing under ~/.cache.
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PANNUKE_HF_DEMO_CACHE": str(tmp_path / "demo-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "demo-cache").glob("raw-40-0-*/Fold 1"))
    assert any((tmp_path / "datasets-cache").iterdir())
    out = tmp_path / "demo_output"
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "validation" and results["synthetic_data"] is True
    assert results["summary"]["mIoU"] >= 0.70, results["summary"]
    assert "| mIoU (%) | mDice (%) |" in done.stdout  # the table was printed
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "predictions.png",
        "README.md",
    ):
        assert (out / name).is_file(), name
