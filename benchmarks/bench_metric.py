"""Benchmark: the streaming mean-IoU metric against a per-image histogram implementation.

Two measurements on random label maps (``num_labels`` classes plus ~1/(n+1) ignored pixels in the
references), generated batch by batch from a fixed seed and never all held in memory:

* **Speed**: :class:`pannuke_hf.metrics.SegmentationConfusionMatrix` (one ``update`` per batch)
  against a per-image implementation of the same definitions: for every image, drop the
  ignored pixels, then ``numpy.histogram`` of the intersection, the prediction and the reference
  over ``num_labels`` bins, summed over images. Only metric time is counted (map generation is
  excluded); both must give the same numbers (checked).
* **Memory**: peak RSS (``VmHWM``) of a fresh subprocess that imports the package, then feeds N
  images batch by batch to the accumulator and computes the metric; "above start" subtracts the
  RSS measured just before the first batch. With ``--store-contrast``, the same for "store, then
  compute": the maps kept (as uint8) until the end, as ``Trainer`` does without ``batch_eval_metrics``.

Usage::

    python benchmarks/bench_metric.py                               # 1000 maps of 512x512
    python benchmarks/bench_metric.py --num-images 200 --size 256 --memory-counts 100 1000
    python benchmarks/bench_metric.py --store-contrast             # + memory when storing all maps

Timings depend on the machine's load: compare rows of one run, not across runs. torch runs with
one thread by default (``--threads``), like the numpy baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from pannuke_hf.metrics import SegmentationConfusionMatrix, metrics_from_areas

IGNORE_INDEX = 255


def generate_batches(
    num_images: int, size: int, num_labels: int, batch_size: int, dtype: str, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (predictions, references) batches of shape (B, size, size); references hold
    ``IGNORE_INDEX`` where the random draw gave ``num_labels``."""
    rng = np.random.default_rng(seed)
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        predictions = rng.integers(0, num_labels, size=(count, size, size), dtype=np.uint8)
        references = rng.integers(0, num_labels + 1, size=(count, size, size), dtype=np.uint8)
        references[references == num_labels] = IGNORE_INDEX
        yield predictions.astype(dtype, copy=False), references.astype(dtype, copy=False)


class PerImageHistogram:
    """The baseline: per-image ``numpy.histogram`` of intersection / prediction / label areas."""

    def __init__(self, num_labels: int, ignore_index: int) -> None:
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.totals = np.zeros((3, num_labels), dtype=np.float64)

    def update(self, predictions: np.ndarray, references: np.ndarray) -> None:
        bins, value_range = self.num_labels, (0, self.num_labels - 1)
        for prediction, reference in zip(predictions, references):
            kept = reference != self.ignore_index
            prediction, reference = prediction[kept], reference[kept]
            intersection = prediction[prediction == reference]
            self.totals[0] += np.histogram(intersection, bins=bins, range=value_range)[0]
            self.totals[1] += np.histogram(prediction, bins=bins, range=value_range)[0]
            self.totals[2] += np.histogram(reference, bins=bins, range=value_range)[0]

    def compute(self) -> dict:
        intersect, pred, label = self.totals
        return metrics_from_areas(intersect, pred + label - intersect, pred, label)


def time_metrics(makers: dict, args: argparse.Namespace, dtype: str) -> dict[str, tuple[float, dict]]:
    """For each named implementation: seconds spent in ``update`` + ``compute`` over all batches
    (each batch generated once and fed to every implementation), and its metrics."""
    metrics = {name: make() for name, make in makers.items()}
    elapsed = dict.fromkeys(makers, 0.0)
    for predictions, references in generate_batches(
        args.num_images, args.size, args.num_labels, args.batch_size, dtype
    ):
        for name, metric in metrics.items():
            start = time.perf_counter()
            metric.update(predictions, references)
            elapsed[name] += time.perf_counter() - start
    results = {}
    for name, metric in metrics.items():
        start = time.perf_counter()
        result = metric.compute()
        results[name] = (elapsed[name] + time.perf_counter() - start, result)
    return results


def same_metrics(a: dict, b: dict) -> bool:
    return all(np.allclose(a[k], b[k], rtol=1e-12, atol=0, equal_nan=True) for k in a)


def rss_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field in KiB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(mode: str, num_images: int, args: argparse.Namespace) -> None:
    """Run in a fresh process: evaluate ``num_images`` maps, print peak memory as JSON."""
    batches = generate_batches(num_images, args.size, args.num_labels, args.batch_size, "uint8")
    start_rss = rss_kib("VmRSS")
    accumulator = SegmentationConfusionMatrix(args.num_labels, IGNORE_INDEX)
    if mode == "streaming":
        for predictions, references in batches:
            accumulator.update(torch.from_numpy(predictions), torch.from_numpy(references))
    else:
        kept = list(batches)
        for predictions, references in kept:
            accumulator.update(predictions, references)
    accumulator.compute()
    peak = rss_kib("VmHWM")
    print(json.dumps({"start_kib": start_rss, "peak_kib": peak}))


def measure_memory(mode: str, num_images: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--memory-child",
        mode,
        "--num-images",
        str(num_images),
        "--size",
        str(args.size),
        "--num-labels",
        str(args.num_labels),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=dict(os.environ))
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=1000, help="maps for the speed test")
    parser.add_argument("--size", type=int, default=512, help="maps are size x size")
    parser.add_argument("--num-labels", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--dtypes", nargs="+", default=["uint8", "int64"], help="map dtypes for the speed test"
    )
    parser.add_argument(
        "--memory-counts", type=int, nargs="*", default=[100, 1000], help="images per memory run"
    )
    parser.add_argument(
        "--store-contrast", action="store_true", help="also measure storing all maps, then computing"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the numpy baseline is single-threaded, and on a shared "
        "machine multi-threaded torch ops stall behind other processes)",
    )
    parser.add_argument("--memory-child", choices=["streaming", "store"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.memory_child:
        memory_child(args.memory_child, args.num_images, args)
        return 0

    print(
        f"# Metric benchmark: {args.num_images} maps of {args.size}x{args.size}, {args.num_labels} classes, "
        f"batches of {args.batch_size}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| implementation | dtype | seconds | ms / image | speed-up | same result |")
    print("|:---|:---|---:|---:|---:|:---|")
    for dtype in args.dtypes:
        makers = {
            "base": lambda: PerImageHistogram(args.num_labels, IGNORE_INDEX),
            "ours": lambda: SegmentationConfusionMatrix(args.num_labels, IGNORE_INDEX),
        }
        timings = time_metrics(makers, args, dtype)
        (base_seconds, base_result), (ours_seconds, ours_result) = timings["base"], timings["ours"]
        agree = "yes" if same_metrics(ours_result, base_result) else "NO"
        per_image = 1000 / args.num_images
        print(
            f"| per-image np.histogram | {dtype} | {base_seconds:.2f} | {base_seconds * per_image:.2f} | 1.0x | |"
        )
        print(
            f"| SegmentationConfusionMatrix | {dtype} | {ours_seconds:.2f} | {ours_seconds * per_image:.2f} "
            f"| {base_seconds / ours_seconds:.1f}x | {agree} |"
        )

    if args.memory_counts:
        print(
            f"\nPeak memory of a fresh process ({args.size}x{args.size} uint8 maps, batches of {args.batch_size}):\n"
        )
        print("| mode | images | peak RSS (MiB) | above start (MiB) |")
        print("|:---|---:|---:|---:|")
        modes = ["streaming"] + (["store"] if args.store_contrast else [])
        for mode in modes:
            for count in args.memory_counts:
                result = measure_memory(mode, count, args)
                peak, above = result["peak_kib"] / 1024, (result["peak_kib"] - result["start_kib"]) / 1024
                label = "streaming (batch by batch)" if mode == "streaming" else "store, then compute"
                print(f"| {label} | {count} | {peak:.0f} | {above:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
