"""Benchmark: PanNuke's nucleus-level scores, fast accumulator vs a per-pair loop, and ``score``'s memory.

Three measurements on generated release-format patches (256 x 256, ~60 nuclei each as discs and
ellipses of the 5 classes, non-contiguous ids; the prediction moves, resizes, drops, re-classes
and adds nuclei):

* **Speed**: :class:`pannuke_hf.metrics.pq.PanNukeInstanceMetrics` ``update_release`` (PQ only,
  ``radius=None``, and with the F1 counts) against a per-pair loop written here the way the
  official script works: per image, binarize channel by channel and id by id, make ids
  contiguous, then for each of the 6 maps (binary + 5 classes) one boolean mask per nucleus and
  IoU of each true nucleus with the predicted nuclei under it. One process, one thread; both
  must give the same per-image bPQ and mPQ (checked).
* **Accumulator memory**: ``tracemalloc`` peak while N images stream through the accumulator and
  ``compute()`` runs (the generated patches are made beforehand and recycled, so only the
  metric's memory is counted).
* **score command**: a fold of N patches (default 2,700) written memory-mapped to disk in the
  release format (masks float64 (N, 256, 256, 6) as in ``masks.npy``, predictions int32
  (N, 256, 256, 5)), scored by ``pannuke-hf score`` in a fresh process; peak RSS of the
  command's process (``VmHWM``) and of its workers (``ru_maxrss``; they are forked from it).

Usage::

    python benchmarks/bench_pq.py                                  # everything, defaults below
    python benchmarks/bench_pq.py --speed-images 100 --memory-counts 100 500 2000
    python benchmarks/bench_pq.py --fold-size 2700 --workdir /tmp/bench_pq --num-proc 1 2
    python benchmarks/bench_pq.py --skip-fold                      # speed + accumulator only

Timings depend on the machine's load: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from pannuke_hf.constants import TISSUES  # noqa: E402
from pannuke_hf.metrics.pq import PanNukeInstanceMetrics  # noqa: E402

SIZE = 256

# ---------------------------------------------------------------------------------------------
# Generated patches
# ---------------------------------------------------------------------------------------------


def _draw(release: np.ndarray, channel: int, value: int, cy: float, cx: float, ry: float, rx: float) -> None:
    y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, release.shape[0])
    x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, release.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    window = release[y0:y1, x0:x1]
    free = inside & (window[..., :5] == 0).all(axis=-1)
    window[..., channel][free] = value


def make_pair(rng: np.random.Generator, nuclei: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """(truth (256, 256, 6) float64, prediction (256, 256, 5) int32) in the release format."""
    true = np.zeros((SIZE, SIZE, 6))
    pred = np.zeros((SIZE, SIZE, 5), dtype=np.int32)
    for _ in range(nuclei):
        channel = int(rng.integers(5))
        cy, cx = rng.uniform(6, SIZE - 6, 2)
        ry, rx = rng.uniform(3.5, 9, 2)
        value = int(rng.integers(1, 3000))
        _draw(true, channel, value, cy, cx, ry, rx)
        if rng.random() < 0.9:  # found: moved, resized, sometimes re-classed
            pc = channel if rng.random() < 0.85 else int(rng.integers(5))
            _draw(pred, pc, int(rng.integers(1, 3000)), cy + rng.normal(0, 1.2), cx + rng.normal(0, 1.2),
                  ry * rng.uniform(0.8, 1.2), rx * rng.uniform(0.8, 1.2))  # fmt: skip
    for _ in range(5):  # false positives
        _draw(pred, int(rng.integers(5)), int(rng.integers(1, 3000)), *rng.uniform(6, SIZE - 6, 2), 5, 5)
    true[..., 5] = (true[..., :5] == 0).all(axis=-1)
    return true, pred


# ---------------------------------------------------------------------------------------------
# The baseline: one boolean mask per nucleus, per pair (the official script's approach)
# ---------------------------------------------------------------------------------------------


def loop_binarize(release: np.ndarray) -> np.ndarray:
    binary = np.zeros(release.shape[:2], dtype=np.int32)
    next_id = 1
    for c in range(5):
        for raw_id in np.unique(release[:, :, c]):
            if raw_id == 0:
                continue
            binary[release[:, :, c] == raw_id] = next_id  # later nuclei overwrite
            next_id += 1
    return binary


def loop_contiguous(instance: np.ndarray) -> np.ndarray:
    out = np.zeros(instance.shape, dtype=np.int32)
    for new, old in enumerate(np.unique(instance)[1:], start=1):
        out[instance == old] = new
    return out


def loop_pq(true: np.ndarray, pred: np.ndarray) -> float:
    true, pred = loop_contiguous(true), loop_contiguous(pred)
    n_true, n_pred = int(true.max()), int(pred.max())
    true_masks = [true == k for k in range(1, n_true + 1)]
    pred_masks = [pred == k for k in range(1, n_pred + 1)]
    tp, iou_sum = 0, 0.0
    for t_mask in true_masks:
        for p_id in np.unique(pred[t_mask]):
            if p_id == 0:
                continue
            p_mask = pred_masks[p_id - 1]
            inter = np.count_nonzero(t_mask & p_mask)
            iou = inter / np.count_nonzero(t_mask | p_mask)
            if iou > 0.5:
                tp += 1
                iou_sum += iou
    fp, fn = n_pred - tp, n_true - tp
    return (tp / (tp + 0.5 * fp + 0.5 * fn)) * (iou_sum / (tp + 1e-6))


def loop_image(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(bPQ, mPQ) of one image by the per-pair loop."""
    true_bin, pred_bin = loop_binarize(true), loop_binarize(pred)
    bpq = np.nan if true_bin.max() == 0 else loop_pq(true_bin, pred_bin)
    pqs = []
    for c in range(5):
        if not true[:, :, c].any():
            pqs.append(np.nan)
        elif not pred[:, :, c].any():
            pqs.append(0.0)
        else:
            pqs.append(loop_pq(true[:, :, c].astype(np.int64), pred[:, :, c].astype(np.int64)))
    return bpq, (np.nan if np.isnan(pqs).all() else float(np.nanmean(pqs)))


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def bench_speed(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Time the three methods image by image, interleaved, so that they share the machine's load.

    Both wall-clock and CPU time (``time.process_time``) are recorded; on a busy machine the CPU
    time is the fairer comparison.
    """
    methods = {
        "per-pair loop (official approach)": loop_image,
        "accumulator, PQ only": PanNukeInstanceMetrics(radius=None).update_release,
        "accumulator, PQ + F1 (radius 12)": PanNukeInstanceMetrics(radius=12.0).update_release,
    }
    for method in methods.values():
        method(*pairs[0])  # warm up: first-call imports and caches are not timed
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    outputs: dict[str, list] = {name: [] for name in methods}
    for true, pred in pairs:
        for name, method in methods.items():
            w, c = time.perf_counter(), time.process_time()
            outputs[name].append(method(true, pred))
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    baseline = next(iter(methods))
    rows = []
    for name in methods:
        row = {"method": name, "seconds": wall[name], "cpu_seconds": cpu[name]}
        row["ms_per_image"] = 1000 * wall[name] / len(pairs)
        row["cpu_ms_per_image"] = 1000 * cpu[name] / len(pairs)
        if name != baseline:
            row["speedup_wall"] = wall[baseline] / wall[name]
            row["speedup_cpu"] = cpu[baseline] / cpu[name]
            row["same_numbers"] = all(
                np.allclose([f["bPQ"], f["mPQ"]], [b, m], rtol=0, atol=1e-12, equal_nan=True)
                for f, (b, m) in zip(outputs[name], outputs[baseline])
            )
        rows.append(row)
    return rows


def bench_accumulator_memory(pairs: list[tuple[np.ndarray, np.ndarray]], counts: list[int]) -> list[dict]:
    rows = []
    for count in counts:
        metric = PanNukeInstanceMetrics()
        tracemalloc.start()
        for i in range(count):
            true, pred = pairs[i % len(pairs)]
            metric.update_release(true, pred, TISSUES[i % len(TISSUES)])
        metric.compute()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append({"images": count, "peak_MiB": peak / 2**20, "state_bytes_per_image": None})
        rows[-1]["state_bytes_per_image"] = sum(r.nbytes for r in metric._rows) / count
    return rows


def write_fold(
    workdir: Path, pairs: list[tuple[np.ndarray, np.ndarray]], count: int
) -> tuple[Path, Path, Path]:
    """masks.npy (float64, 6 channels), pred.npy (int32, 5 channels), types.npy, written memory-mapped."""
    workdir.mkdir(parents=True, exist_ok=True)
    masks_path, pred_path, types_path = workdir / "masks.npy", workdir / "pred.npy", workdir / "types.npy"
    masks = np.lib.format.open_memmap(masks_path, mode="w+", dtype=np.float64, shape=(count, SIZE, SIZE, 6))
    pred = np.lib.format.open_memmap(pred_path, mode="w+", dtype=np.int32, shape=(count, SIZE, SIZE, 5))
    for i in range(count):
        masks[i], pred[i] = pairs[i % len(pairs)]
        if i % 64 == 63:  # flush and re-map: keep this process's memory flat too
            masks.flush(), pred.flush()
            del masks, pred
            masks = np.lib.format.open_memmap(masks_path, mode="r+")
            pred = np.lib.format.open_memmap(pred_path, mode="r+")
    masks.flush(), pred.flush()
    del masks, pred
    np.save(types_path, np.array([TISSUES[i % len(TISSUES)] for i in range(count)]))
    return masks_path, pred_path, types_path


_RUN_SCORE = """
import json, resource, sys, time
from pannuke_hf.cli import main
if __name__ == "__main__":
    start = time.perf_counter()
    status = main(sys.argv[1:])
    seconds = time.perf_counter() - start
    # VmHWM: this process's own peak (ru_maxrss would include the benchmark's memory, which a
    # fork + exec child inherits in Linux's accounting).
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print("BENCH", json.dumps({"status": status, "seconds": seconds, "self_MiB": hwm / 1024,
          "children_MiB": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def bench_score(masks_path: Path, pred_path: Path, types_path: Path, num_proc: int, out: Path) -> dict:
    argv = ["score", "--true", str(masks_path), "--pred", str(pred_path), "--tissues", str(types_path),
            "--out", str(out), "--num-proc", str(num_proc), "--no-progress"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _RUN_SCORE, *argv], capture_output=True, text=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"score failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads(line[len("BENCH ") :])
    summary = json.loads((out / "scores.json").read_text())["summary"]
    result.update(num_proc=num_proc, mPQ=summary["mPQ"], bPQ=summary["bPQ"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speed-images", type=int, default=100, help="images timed (default 100)")
    parser.add_argument("--distinct", type=int, default=50, help="distinct generated patches (recycled)")
    parser.add_argument("--memory-counts", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--fold-size", type=int, default=2700, help="patches of the generated fold")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="score --num-proc values")
    parser.add_argument("--workdir", default="/tmp/bench_pq", help="where the generated fold is written")
    parser.add_argument(
        "--keep", action="store_true", help="keep the generated fold (and reuse one already there)"
    )
    parser.add_argument("--skip-fold", action="store_true", help="skip the score command measurement")
    parser.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    pairs = [make_pair(rng) for _ in range(args.distinct)]
    nuclei = np.mean([len(np.unique(t[..., :5])) - 1 for t, _ in pairs])
    print(f"generated {args.distinct} distinct 256x256 patches, {nuclei:.1f} nuclei each on average\n")

    report: dict = {}
    speed_pairs = [pairs[i % len(pairs)] for i in range(args.speed_images)]
    report["speed"] = bench_speed(speed_pairs)
    print(f"## Speed ({args.speed_images} images, one process, one thread, methods interleaved)\n")
    print("| method | CPU ms / image | speed-up (CPU) | wall ms / image | speed-up (wall) | same bPQ, mPQ |")
    print("|:---|---:|---:|---:|---:|:---:|")
    for row in report["speed"]:
        cpu_up = f"{row['speedup_cpu']:.1f}x" if "speedup_cpu" in row else "1x"
        wall_up = f"{row['speedup_wall']:.1f}x" if "speedup_wall" in row else "1x"
        same = {True: "yes", False: "NO"}.get(row.get("same_numbers"), "")
        print(f"| {row['method']} | {row['cpu_ms_per_image']:.2f} | {cpu_up} | {row['ms_per_image']:.2f} | "
              f"{wall_up} | {same} |")  # fmt: skip

    report["accumulator_memory"] = bench_accumulator_memory(pairs, args.memory_counts)
    print("\n## Accumulator memory (tracemalloc peak while streaming, incl. one image's work)\n")
    print("| images | peak MiB | state bytes / image |")
    print("|---:|---:|---:|")
    for row in report["accumulator_memory"]:
        print(f"| {row['images']} | {row['peak_MiB']:.2f} | {row['state_bytes_per_image']:.0f} |")

    if not args.skip_fold:
        workdir = Path(args.workdir)
        start = time.perf_counter()
        paths = (workdir / "masks.npy", workdir / "pred.npy", workdir / "types.npy")
        if not (args.keep and paths[0].is_file() and len(np.load(paths[2])) == args.fold_size):
            paths = write_fold(workdir, pairs, args.fold_size)
        gb = sum(p.stat().st_size for p in paths) / 1e9
        print(
            f"\nwrote a {args.fold_size}-patch fold ({gb:.1f} GB) in {time.perf_counter() - start:.0f} s to {workdir}"
        )
        report["score"] = [bench_score(*paths, n, workdir / f"out{n}") for n in args.num_proc]
        print(f"\n## `pannuke-hf score` on {args.fold_size} patches (masks float64, 6 channels)\n")
        print("| --num-proc | s | images / s | peak RSS main MiB | peak RSS worker MiB | mPQ | bPQ |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for row in report["score"]:
            worker = f"{row['children_MiB']:.0f}" if row["num_proc"] > 1 else "-"
            print(f"| {row['num_proc']} | {row['seconds']:.1f} | {args.fold_size / row['seconds']:.1f} | "
                  f"{row['self_MiB']:.0f} | {worker} | {row['mPQ']:.4f} | {row['bPQ']:.4f} |")  # fmt: skip
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
