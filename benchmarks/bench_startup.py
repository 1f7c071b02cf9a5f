"""Start-up times of the command line and of the dataset path, each in a fresh process.

    python benchmarks/bench_startup.py [--repeats 5]

Every row is a new interpreter (what a user waits for), run ``--repeats`` times, the rows taken in
turn (round robin) so that a busy machine slows them alike. The table shows the median, min and
max wall-clock seconds and whether the process had imported torch / transformers when it ended
(rows run through ``python -c`` report their own ``sys.modules``; the console-script rows are
checked with the same code called in-process in a separate ``python -c`` run).

The dataset rows load a tiny generated release (2 patches per fold) whose Arrow cache is built
once before timing, so they measure start-up and cache lookup, not the build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPORT = "import sys; print('LOADED', 'torch' in sys.modules, 'transformers' in sys.modules)"


def cli_path() -> str:
    """The ``pannuke-hf`` console script next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("pannuke-hf")
    found = beside if beside.is_file() else shutil.which("pannuke-hf")
    if not found:
        raise SystemExit("pannuke-hf is not installed (pip install -e .)")
    return str(found)


def rows(data_dir: Path, cache_dir: Path) -> list[tuple[str, list[str], list[str]]]:
    """``(name, command, command that reports the modules)`` of each measured row."""
    py = sys.executable
    cli = cli_path()
    load = (
        "from datasets import load_dataset; "
        f"ds = load_dataset('pannuke_hf', data_dir={str(data_dir)!r}, cache_dir={str(cache_dir)!r}); "
        "assert ds['fold1'].num_rows == 2"
    )
    in_process = (
        "import sys; from pannuke_hf.cli import main; sys.argv[0] = 'pannuke-hf'; rc = main({argv!r}); "
    )
    error_argv = ["evaluate", "--model", "/nonexistent_model", "--data-dir", "/nonexistent"]
    return [
        ("`pannuke-hf --help`", [cli, "--help"], [py, "-c", in_process.format(argv=["--help"]) + REPORT]),
        (
            "`pannuke-hf evaluate --model /nonexistent_model ...` (instant error)",
            [cli, *error_argv],
            [py, "-c", in_process.format(argv=error_argv) + REPORT],
        ),
        ("`import pannuke_hf`", [py, "-c", "import pannuke_hf; " + REPORT], []),
        ("`import datasets`", [py, "-c", "import datasets; " + REPORT], []),
        (
            "`import pannuke_hf` + `load_dataset` (cached)",
            [py, "-c", f"import pannuke_hf; {load}; {REPORT}"],
            [],
        ),
        (
            "`import torch` + `import pannuke_hf` + `load_dataset` (cached)",
            [py, "-c", f"import torch; import pannuke_hf; {load}; {REPORT}"],
            [],
        ),
        ("`import torch`", [py, "-c", "import torch; " + REPORT], []),
        (
            "`import pannuke_hf` + `AutoConfig.for_model('unet_fcn')`",
            [
                py,
                "-c",
                f"import pannuke_hf; from transformers import AutoConfig; AutoConfig.for_model('unet_fcn'); {REPORT}",
            ],
            [],
        ),
    ]


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall-clock seconds of one run, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{command} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def loaded(stdout: str) -> str:
    """The torch / transformers column from a ``LOADED`` line."""
    for line in stdout.splitlines():
        if line.startswith("LOADED"):
            _, torch_loaded, transformers_loaded = line.split()
            return f"{'yes' if torch_loaded == 'True' else 'no'} / {'yes' if transformers_loaded == 'True' else 'no'}"
    return "?"


def main() -> None:
    """Print the start-up table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of every row (default 5)")
    args = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, cache_dir = Path(tmp) / "raw", Path(tmp) / "cache"
        subprocess.run(
            [cli_path(), "make-synthetic", str(data_dir), "--patches-per-fold", "2"],
            check=True,
            capture_output=True,
        )
        table = rows(data_dir, cache_dir)
        run_once(table[4][1], env)  # build the Arrow cache once
        times: dict[str, list[float]] = {name: [] for name, _, _ in table}
        modules: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, command, _ in table:
                seconds, stdout = run_once(command, env)
                times[name].append(seconds)
                if stdout and "LOADED" in stdout:
                    modules[name] = loaded(stdout)
        for name, _, report in table:
            if report:
                modules[name] = loaded(run_once(report, env)[1])

    cpus = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Start-up, fresh processes, {args.repeats} runs each ({cpus} CPUs, load average {load:.1f})\n")
    print("| what | median s | min s | max s | torch / transformers imported |")
    print("|:--|--:|--:|--:|:--|")
    for name, _, _ in table:
        values = times[name]
        print(
            f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} | "
            f"{modules.get(name, '?')} |"
        )


if __name__ == "__main__":
    main()
