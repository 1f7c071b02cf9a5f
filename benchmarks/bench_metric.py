"""Benchmark: the streaming mean-IoU metric against a per-image histogram implementation.

Two measurements on random label maps (``num_labels`` classes plus ~1/(n+1) ignored pixels in the
references), generated batch by batch from a fixed seed and never all held in memory:

* **Speed**: :class:`pannuke_hf.metrics.SegmentationConfusionMatrix` (one ``update`` per batch)
  against a per-image implementation of the same definitions: for every image, drop the
  ignored pixels, then ``numpy.histogram`` of the intersection, the prediction and the reference
  over ``num_labels`` bins, summed over images. Only metric time is counted (map generation is
  excluded); both must give the same numbers (checked).
* **The evaluate route** (``--evaluate-maps``, default 40 maps of 512x512):
  ``evaluate.load(MEAN_IOU_PATH)``, then ``add_batch`` + ``compute``, through evaluate's Arrow
  cache, against the Hub ``mean_iou`` metric's route. The Hub module cannot be downloaded offline,
  so the benchmark stands in for it with two ``evaluate.Metric`` classes written here that store
  the maps with the Hub module's input features (``datasets.Image()`` in its current revision,
  ``Sequence(Sequence(Value("uint16")))`` in an earlier one) and compute like it (per-image
  ``numpy.histogram``); ``--hub`` also loads the real ``evaluate.load("mean_iou")`` when it is
  reachable. Runs are interleaved (A B C, A B C, ...) and the median is reported; a fresh metric
  object per run, loading excluded.
* **Memory**: peak RSS (``VmHWM``) of a fresh subprocess that imports the package, then feeds N
  images batch by batch to the accumulator and computes the metric; "above start" subtracts the
  RSS measured just before the first batch. With ``--store-contrast``, the same for "store, then
  compute": the maps kept (as uint8) until the end, as ``Trainer`` does without ``batch_eval_metrics``.

Usage::

    python benchmarks/bench_metric.py                               # 1000 maps of 512x512
    python benchmarks/bench_metric.py --num-images 200 --size 256 --memory-counts 100 1000
    python benchmarks/bench_metric.py --store-contrast             # + memory when storing all maps
    python benchmarks/bench_metric.py --num-images 0 --memory-counts   # the evaluate route only

Timings depend on the machine's load: compare rows of one run, not across runs. torch runs with
one thread by default (``--threads``), like the numpy baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

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


# ------------------------------------------------------------------------------------------------
# The evaluate route: our metric against stand-ins for the Hub mean_iou module
# ------------------------------------------------------------------------------------------------


def hub_standin(feature: str, num_labels: int, ignore_index: int):
    """An ``evaluate.Metric`` storing the maps with the Hub ``mean_iou`` module's input features
    (``"image"``: ``datasets.Image()``; ``"uint16"``: ``Sequence(Sequence(Value("uint16")))``)
    and computing per image with ``numpy.histogram``, as that module does."""
    import datasets
    import evaluate

    class HubMeanIoUStandIn(evaluate.Metric):
        def _info(self) -> evaluate.MetricInfo:
            if feature == "image":
                column = datasets.Image()
            else:
                column = datasets.Sequence(datasets.Sequence(datasets.Value("uint16")))
            return evaluate.MetricInfo(
                description="stand-in",
                citation="",
                inputs_description="",
                features=datasets.Features({"predictions": column, "references": column}),
            )

        def _compute(self, predictions, references, num_labels: int, ignore_index: int) -> dict:
            totals = PerImageHistogram(num_labels, ignore_index)
            for prediction, reference in zip(predictions, references):
                totals.update(np.array(prediction)[None], np.array(reference)[None])
            return totals.compute()

    return HubMeanIoUStandIn()


def evaluate_route(args: argparse.Namespace) -> list[str]:
    """Markdown rows: median seconds of add_batch + compute per route, interleaved runs."""
    import evaluate

    from pannuke_hf.metrics import MEAN_IOU_PATH

    count, size = args.evaluate_maps, args.size
    predictions, references = [], []
    for batch in generate_batches(count, size, args.num_labels, args.batch_size, "uint8", seed=1):
        predictions += list(batch[0])
        references += list(batch[1])

    routes: dict[str, Callable] = {
        "ours: evaluate.load(MEAN_IOU_PATH)": lambda: evaluate.load(MEAN_IOU_PATH),
        "Hub stand-in, datasets.Image() features": lambda: hub_standin(
            "image", args.num_labels, IGNORE_INDEX
        ),
        'Hub stand-in, Sequence(Sequence(Value("uint16")))': lambda: hub_standin(
            "uint16", args.num_labels, IGNORE_INDEX
        ),
    }
    if args.hub:
        try:
            evaluate.load("mean_iou")
            routes['Hub: evaluate.load("mean_iou")'] = lambda: evaluate.load("mean_iou")
        except Exception as error:  # offline, no cache
            print(f"(the Hub mean_iou module could not be loaded: {type(error).__name__})", file=sys.stderr)
    seconds: dict[str, list[float]] = {name: [] for name in routes}
    results: dict[str, dict] = {}
    for _ in range(args.evaluate_repeats):
        for name, make in routes.items():
            metric = make()
            start = time.perf_counter()
            metric.add_batch(predictions=predictions, references=references)
            results[name] = metric.compute(num_labels=args.num_labels, ignore_index=IGNORE_INDEX)
            seconds[name].append(time.perf_counter() - start)
    ours = next(iter(routes))
    keys = ("mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy")
    rows = []
    for name in routes:
        median = statistics.median(seconds[name])
        ratio = statistics.median(seconds[name]) / statistics.median(seconds[ours])
        same = all(np.allclose(results[name][k], results[ours][k], rtol=1e-12, equal_nan=True) for k in keys)
        runs = " / ".join(f"{t:.2f}" for t in seconds[name])
        rows.append(f"| {name} | {median:.2f} | {runs} | {ratio:.1f}x | {'yes' if same else 'NO'} |")
    return rows


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
    parser.add_argument(
        "--evaluate-maps", type=int, default=40, help="maps for the evaluate-route table (0: skip it)"
    )
    parser.add_argument("--evaluate-repeats", type=int, default=3, help="interleaved runs per route")
    parser.add_argument("--hub", action="store_true", help="also try the real Hub mean_iou (needs network)")
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
    if args.evaluate_maps:
        print(
            f"The evaluate route: add_batch + compute of {args.evaluate_maps} maps of {args.size}x{args.size} "
            f"through evaluate's Arrow cache; median of {args.evaluate_repeats} interleaved runs "
            "(loading excluded). 'our speed-up' = route's time / ours.\n"
        )
        print("| route | median s | runs (s) | our speed-up | same result |")
        print("|:---|---:|:---|---:|:---|")
        for row in evaluate_route(args):
            print(row, flush=True)
        print()
    if not args.num_images:
        args.dtypes = []
    else:
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
