"""Benchmark: per-patch cost of the instance post-processing (``hv_to_instances``, ``semantic_to_instances``).

Each patch is a ``--size`` x ``--size`` map with about ``--nuclei`` elliptic nuclei (radii 4-9
pixels, random classes 1-5, touching allowed), turned into what a model would output: smoothed,
noisy class probabilities, a nucleus-pixel probability and horizontal / vertical distance maps
(offset of every nucleus pixel from its nucleus's centre, scaled to [-1, 1] per nucleus, plus
noise). The post-processing runs on one CPU core (OpenCV, torch and BLAS limited to one thread).
Printed: milliseconds per patch (wall-clock median and 90th percentile over ``--patches`` patches,
after one warm-up, and the median CPU time of the process, which stays close to the unloaded cost
on a machine shared with other jobs), nuclei found vs nuclei drawn. Target of the hv path: <= 30 ms
per 256x256 patch.

Usage::

    python benchmarks/bench_postprocess.py                  # ~10 s
    python benchmarks/bench_postprocess.py --patches 50 --size 256 --nuclei 60
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.draw import ellipse  # noqa: E402

from pannuke_hf.models.unet_fcn.image_processing_unet_fcn import (  # noqa: E402
    hv_to_instances,
    semantic_to_instances,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="patch side in pixels")
    p.add_argument("--nuclei", type=int, default=60, help="nuclei drawn per patch")
    p.add_argument("--patches", type=int, default=20, help="timed patches")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def synthetic_outputs(size: int, nuclei: int, rng: np.random.Generator):
    """(type probabilities (6, H, W), nucleus probability (H, W), hv (2, H, W), true nuclei)."""
    instances = np.zeros((size, size), dtype=np.int32)
    labels = np.zeros((size, size), dtype=np.int64)
    for k in range(1, nuclei + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(4, 9, 2)
        rr, cc = ellipse(cy, cx, ry, rx, shape=(size, size), rotation=rng.uniform(0, np.pi))
        instances[rr, cc] = k
        labels[rr, cc] = rng.integers(1, 6)
    hv = np.zeros((2, size, size), dtype=np.float32)
    ys, xs = np.nonzero(instances)
    ids = instances[ys, xs]
    present = np.arange(nuclei + 1)
    for axis, coords in ((0, xs), (1, ys)):
        with np.errstate(invalid="ignore"):  # nuclei fully covered by later ones have no pixel
            centre = ndimage.mean(coords, ids, index=present)
        offset = coords - np.nan_to_num(centre)[ids]
        reach = ndimage.maximum(np.abs(offset), ids, index=present)
        hv[axis, ys, xs] = offset / np.maximum(np.nan_to_num(reach), 1)[ids]
    hv += rng.normal(0, 0.05, hv.shape).astype(np.float32)
    logits = np.eye(6, dtype=np.float32)[labels].transpose(2, 0, 1) * 4
    logits += rng.normal(0, 1, logits.shape).astype(np.float32)
    logits = ndimage.uniform_filter(logits, size=(1, 3, 3))
    probs = torch.from_numpy(logits).softmax(0).numpy()
    nucleus = np.clip((instances > 0) * 0.9 + rng.normal(0.05, 0.05, instances.shape), 0, 1).astype(
        np.float32
    )
    return probs, nucleus, hv, len(np.unique(instances)) - 1


def main(argv: list[str] | None = None) -> None:
    """Time both post-processing paths and print a table."""
    args = parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    patches = [synthetic_outputs(args.size, args.nuclei, rng) for _ in range(args.patches + 1)]
    runs = {
        "hv_to_instances": lambda p: hv_to_instances(p[0], p[1], p[2]),
        "semantic_to_instances": lambda p: semantic_to_instances(p[0]),
        "semantic, no watershed": lambda p: semantic_to_instances(p[0], watershed=False),
    }
    print(f"{args.patches} patches of {args.size}x{args.size}, ~{args.nuclei} nuclei drawn, one CPU thread")
    print(
        f"{'path':<24} {'median ms':>10} {'p90 ms':>8} {'CPU ms':>8} {'nuclei found':>13} {'nuclei drawn':>13}"
    )
    for name, run in runs.items():
        run(patches[0])  # warm-up (imports, OpenCV kernels)
        times, cpu, found = [], [], []
        for patch in patches[1:]:
            start, start_cpu = time.perf_counter(), time.process_time()
            instances, _ = run(patch)
            times.append(1000 * (time.perf_counter() - start))
            cpu.append(1000 * (time.process_time() - start_cpu))
            found.append(int(instances.max()))
        drawn = np.mean([p[3] for p in patches[1:]])
        print(
            f"{name:<24} {np.median(times):>10.1f} {np.percentile(times, 90):>8.1f} {np.median(cpu):>8.1f} "
            f"{np.mean(found):>13.1f} {drawn:>13.1f}"
        )


if __name__ == "__main__":
    main()
