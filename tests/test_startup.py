"""Start-up: `import pannuke_hf` and the dataset path import neither torch nor transformers.

Each check runs in a fresh interpreter (the test process itself has long imported both). Times
are measured by ``benchmarks/bench_startup.py``, never asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers")


def run_fresh(code: str, tmp_path) -> dict:
    """Run ``code`` in a new interpreter; it must end by printing one JSON line."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_and_load_dataset_import_neither_torch_nor_transformers(raw_root, tmp_path):
    result = run_fresh(
        f"""
        import json, sys
        import pannuke_hf
        after_import = sorted(m for m in ("torch", "transformers", "datasets") if m in sys.modules)
        from datasets import load_dataset
        ds = load_dataset("pannuke_hf", data_dir={str(raw_root)!r})
        print(json.dumps({{
            "after_import": after_import,
            "rows": {{name: split.num_rows for name, split in ds.items()}},
            "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
        }}))
        """,
        tmp_path,
    )
    assert result["after_import"] == []  # not even datasets
    assert sorted(result["rows"]) == ["fold1", "fold2", "fold3"] and all(result["rows"].values())
    assert result["heavy"] == []


def test_data_commands_import_neither_torch_nor_transformers(raw_root, tmp_path):
    argvs = [
        ["--help"],
        ["prepare", "--data-dir", str(raw_root)],
        ["stats", "--data-dir", str(raw_root), "--scheme", "reference"],
        ["export", "--data-dir", str(raw_root), "--out", str(tmp_path / "parquet")],
        ["make-synthetic", str(tmp_path / "generated"), "--patches-per-fold", "1"],
    ]
    for argv in argvs:
        result = run_fresh(
            f"""
            import json, sys
            from pannuke_hf.cli import main
            status = main({argv!r})
            print(json.dumps({{"status": status, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
            """,
            tmp_path,
        )
        assert result == {"status": 0, "heavy": []}, argv


def test_help_imports_no_library(tmp_path):
    result = run_fresh(
        """
        import json, sys
        from pannuke_hf.cli import main
        main(["--help"])
        print(json.dumps(sorted(m for m in ("torch", "transformers", "datasets", "numpy") if m in sys.modules)))
        """,
        tmp_path,
    )
    assert result == []
