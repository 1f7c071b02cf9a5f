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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "demo_output"
    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "validation" and results["synthetic_data"] is True
    assert results["summary"]["mIoU"] >= 0.70, results["summary"]
    assert "| mIoU | mDice |" in done.stdout  # the table was printed
    for name in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "predictions.png",
        "README.md",
    ):
        assert (out / name).is_file(), name
