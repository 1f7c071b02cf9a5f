"""Benchmark: preparing PanNuke folds, the builder against the reference approach.

Generates folds in the raw format (``pannuke_hf.data.synthetic``), then times, each in a fresh
subprocess:

* ``builder np=1`` / ``builder np=2``: ``PanNuke(data_dir=...).download_and_prepare(num_proc=N)``
  (memory-mapped reading, PNG-encoded Arrow shards);
* ``reference``: the reference project's approach: each fold's ``images.npy`` and ``masks.npy``
  loaded whole with ``np.load``, then one PNG written per image and one per label map (masks cast
  to uint8 and written channel by channel as label ``(j + 1) % 6``), with PIL's defaults.

The methods run in rounds, interleaved (reference, builder np=1, builder np=2; then again), so
that every builder run is compared with the reference run of its own round: on a shared machine
the load drifts over minutes, and a ratio of two runs far apart measures the drift. The table
gives, per method, the median over rounds of the seconds, of patches/s and of the per-round
ratio to the reference (each round's ratio listed too), the CPU seconds (user + system, the
process and its workers: the work done, whatever the load) and peak memory, three ways:
``RSS main`` = peak RSS (VmHWM) of the measured process itself; ``RSS worker`` = the largest
peak RSS of its ``num_proc`` workers (sampled every 0.2 s); ``PSS all`` = the largest sum of
proportional set sizes over the process and all its descendants, sampled every 0.2 s from /proc
(shared pages counted once); each the largest over rounds. The load average before and after
is printed with the table.

Usage::

    python benchmarks/bench_prepare.py                           # 300 patches per fold, 2 rounds
    python benchmarks/bench_prepare.py --sizes 100 --rounds 1    # short
    python benchmarks/bench_prepare.py --sizes 300 1000          # both sizes (long on 2 cores)

Throughput depends on the machine's load: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

METHODS: dict[str, tuple[str, int]] = {
    "reference": ("reference", 1),
    "builder np=1": ("builder", 1),
    "builder np=2": ("builder", 2),
}


# --------------------------------------------------------------------------------------------
# Workers (run in a fresh subprocess each)
# --------------------------------------------------------------------------------------------


def _work_builder(data_dir: str, out_dir: str, num_proc: int) -> int:
    """Build the Arrow dataset with the project's builder; returns the number of patches."""
    from pannuke_hf.data.builder import PanNuke

    builder = PanNuke(data_dir=data_dir, cache_dir=out_dir)
    builder.download_and_prepare(num_proc=num_proc if num_proc > 1 else None)
    return sum(split.num_examples for split in builder.info.splits.values())


def _work_reference(data_dir: str, out_dir: str) -> int:
    """The reference approach: whole-fold np.load, one PNG per image and per label map."""
    import numpy as np
    from PIL import Image

    from pannuke_hf.constants import FOLDS, NUM_RAW_CHANNELS, raw_relpaths

    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    count = 0
    for fold in FOLDS:
        paths = raw_relpaths(fold)
        images = np.load(pathlib.Path(data_dir) / paths["images"])  # whole fold in memory
        masks = np.load(pathlib.Path(data_dir) / paths["masks"])
        for index in range(len(images)):
            name = f"fold{fold}_{index:04d}.png"
            Image.fromarray(images[index].astype(np.uint8)).save(out / "images" / name)
            label = np.zeros(masks.shape[1:3], dtype=np.uint8)
            for channel in range(NUM_RAW_CHANNELS):
                binary = masks[index, :, :, channel].astype(np.uint8) > 0
                label[binary] = (channel + 1) % NUM_RAW_CHANNELS
            Image.fromarray(label).save(out / "masks" / name)
            count += 1
        del images, masks
    return count


def _worker(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.worker == "builder":
        patches = _work_builder(args.data_dir, args.out_dir, args.num_proc)
    else:
        patches = _work_reference(args.data_dir, args.out_dir)
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: ru_maxrss survives fork + exec, so it would report the parent's size.
    print(json.dumps({"patches": patches, "seconds": seconds, "self_kb": _peak_rss_kb("self")}))


# --------------------------------------------------------------------------------------------
# Parent: process-tree memory sampling, runs, table
# --------------------------------------------------------------------------------------------


def _peak_rss_kb(pid: int | str) -> int:
    """Peak resident set size (VmHWM) of a live process, in kB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """``root`` and all its descendant pids, from /proc/PID/task/TID/children."""
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except OSError:  # the process ended meanwhile
            continue
    return found


def _pss_bytes(pid: int) -> int:
    """Proportional set size of a process: shared pages (libraries, forked memory) split fairly."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _tree_pss(root: int) -> int:
    """Sum of the PSS of ``root`` and all its descendants, in bytes.

    PSS, not RSS: ``num_proc`` workers are forked and share the parent's pages; summing their RSS
    would count those pages once per process.
    """
    return sum(_pss_bytes(pid) for pid in _descendants(root))


def _run(method: str, data_dir: pathlib.Path, work: pathlib.Path) -> dict:
    """Run one method in a fresh subprocess; returns its timings and memory peaks."""
    kind, num_proc = METHODS[method]
    out_dir = work / f"out_{kind}_{num_proc}"
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", kind, "--data-dir", str(data_dir)]
    command += ["--out-dir", str(out_dir), "--num-proc", str(num_proc)]
    log = work / f"log_{kind}_{num_proc}.txt"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Output goes to files, not pipes: progress bars would fill a pipe nobody reads until the
    # end and block the worker.
    with open(log, "w") as stderr, open(log.with_suffix(".json"), "w") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        peak_tree = peak_workers_kb = 0
        while process.poll() is None:
            peak_tree = max(peak_tree, _tree_pss(process.pid))
            for pid in _descendants(process.pid)[1:]:  # num_proc workers
                peak_workers_kb = max(peak_workers_kb, _peak_rss_kb(pid))
            time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {process.returncode}):\n{log.read_text()[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker and its (reaped) children
    result = json.loads(log.with_suffix(".json").read_text().strip().splitlines()[-1])
    result["cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["peak_main_mb"] = result["self_kb"] / 1024
    result["peak_workers_mb"] = peak_workers_kb / 1024
    result["peak_tree_mb"] = peak_tree / 2**20
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def _has_folds(data_dir: pathlib.Path, size: int) -> bool:
    """Whether ``data_dir`` already holds three complete generated folds of ``size`` patches."""
    import numpy as np

    from pannuke_hf.constants import FOLDS, raw_relpaths

    try:
        return all(
            np.load(data_dir / rel, mmap_mode="r").shape[0] == size
            for fold in FOLDS
            for rel in raw_relpaths(fold).values()
        )
    except (OSError, ValueError):
        return False


def _table(rows: list[tuple[int, int, str, dict]]) -> str:
    """Markdown table, one row per (size, method): medians over rounds, memory maxima."""
    lines = [
        "| patches/fold | method | rounds | patches | seconds (median) | patches/s | vs reference "
        "(median) | per round | CPU s | peak RSS main (MB) | peak RSS worker (MB) | peak PSS all (MB) |",
        "|--:|:--|--:|--:|--:|--:|--:|:--|--:|--:|--:|--:|",
    ]
    reference = {(size, r): res["patches"] / res["seconds"] for size, r, m, res in rows if m == "reference"}
    keys = list(dict.fromkeys((size, method) for size, _, method, _ in rows))
    for size, method in keys:
        runs = [(r, res) for s, r, m, res in rows if (s, m) == (size, method)]
        ratios = [
            res["patches"] / res["seconds"] / reference[(size, r)]
            for r, res in runs
            if (size, r) in reference
        ]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        per_round = " / ".join(f"{x:.2f}" for x in ratios) if ratios else "-"
        seconds = statistics.median(res["seconds"] for _, res in runs)
        speed = statistics.median(res["patches"] / res["seconds"] for _, res in runs)
        cpu = statistics.median(res["cpu_seconds"] for _, res in runs)
        patches = runs[0][1]["patches"]
        main_mb = max(res["peak_main_mb"] for _, res in runs)
        workers = f"{max(res['peak_workers_mb'] for _, res in runs):.0f}" if METHODS[method][1] > 1 else "-"
        tree_mb = max(res["peak_tree_mb"] for _, res in runs)
        lines.append(
            f"| {size} | {method} | {len(runs)} | {patches} | {seconds:.1f} | {speed:.1f} | {ratio} | "
            f"{per_round} | {cpu:.1f} | {main_mb:.0f} | {workers} | {tree_mb:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300], help="patches per fold (default 300)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all methods (default 2)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse-data", action="store_true", help="keep and reuse generated folds found in --workdir"
    )
    parser.add_argument("--worker", choices=["builder", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    from pannuke_hf.data.synthetic import make_synthetic_folds

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_"))
    rows = []
    load_before = os.getloadavg()
    try:
        for size in args.sizes:
            data_dir = work / f"raw_{size}"
            if not (args.reuse_data and _has_folds(data_dir, size)):
                shutil.rmtree(data_dir, ignore_errors=True)
                start = time.perf_counter()
                make_synthetic_folds(data_dir, size, seed=args.seed)
                print(f"generated 3 x {size} patches in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            methods = sorted(args.methods, key=list(METHODS).index)  # the reference first in a round
            for round_index in range(args.rounds):
                for method in methods:
                    result = _run(method, data_dir, work)
                    rows.append((size, round_index, method, result))
                    print(  # partial results
                        f"round {round_index + 1}: {method}: {result['seconds']:.1f} s, "
                        f"{result['cpu_seconds']:.1f} CPU s",
                        file=sys.stderr,
                        flush=True,
                    )
            if not args.reuse_data:
                shutil.rmtree(data_dir, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    print(
        f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; 3 folds of generated data each; "
        f"load average (1 min) {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n"
    )
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
