"""Benchmark: sliding-window prediction (``pannuke_hf.inference``) by image size, overlap and batch size.

For each image size, a random-tissue RGB image is predicted with a randomly initialised UNet-FCN
(``--base-channels``, ``--num-stages``) and the default ``UNetFCNImageProcessor`` (tiles of 256
image pixels resized to 512), in tiles of ``--tile-size`` with each ``--overlaps`` value and each
``--batch-sizes`` value. Printed: tiles per image, seconds per image (best of ``--repeats``),
megapixels per second, and the share of extra model work that the overlap costs (tiles x tile
area / image area). One untimed warm-up prediction runs first.

Usage::

    python benchmarks/bench_predict.py                                   # a few minutes on 2 CPU cores
    python benchmarks/bench_predict.py --sizes 512 2048 --overlaps 0 85 --batch-sizes 1 8 --device cuda \\
        --base-channels 64 --num-stages 5

Timings depend on the machine's load: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pannuke_hf  # noqa: F401  (registers the model classes)
from pannuke_hf.inference import default_scale, plan_tiles, predict_image
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation, UNetFCNImageProcessor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 640], help="square image sides")
    p.add_argument("--tile-size", type=int, default=256, help="tile side in image pixels")
    p.add_argument("--overlaps", type=int, nargs="+", default=[0, 64], help="tile overlaps in pixels")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4], help="tiles per forward pass")
    p.add_argument("--base-channels", type=int, default=8, help="UNet-FCN base channels (reference: 64)")
    p.add_argument("--num-stages", type=int, default=4, help="UNet-FCN stages (reference: 5)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per configuration (best is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p.parse_args(argv)


def build_model(base_channels: int, num_stages: int, device: str) -> torch.nn.Module:
    """A randomly initialised UNet-FCN in eval mode."""
    config = UNetFCNConfig(
        base_channels=base_channels,
        num_stages=num_stages,
        head_channels=base_channels,
    )
    return UNetFCNForSemanticSegmentation(config).to(device).eval()


def time_one(fn, repeats: int, device: str) -> float:
    """Best wall time of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    """Run the grid and print a Markdown table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.base_channels, args.num_stages, args.device)
    processor = UNetFCNImageProcessor()
    rng = np.random.default_rng(0)
    predict_image(model, processor, rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))  # warm-up
    print(
        f"UNet-FCN base {args.base_channels}, {args.num_stages} stages; tiles of {args.tile_size} px "
        f"(model input {round(args.tile_size * processor.size.height / 256)} px); device {args.device}; "
        f"{torch.get_num_threads()} CPU threads\n"
    )
    print("| image | overlap | batch | tiles | s / image | MPix / s | model work / image area |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        for overlap in args.overlaps:
            # the same plan as predict_image: strides aligned to the model's pooling grid
            align = max(1, int(model.config.output_stride / default_scale(processor)[0]))
            plan = plan_tiles(size, size, args.tile_size, overlap, align=align)
            work = len(plan.corners) * args.tile_size**2 / size**2
            for batch in args.batch_sizes:
                seconds = time_one(
                    lambda image=image, overlap=overlap, batch=batch: predict_image(
                        model, processor, image, tile_size=args.tile_size, overlap=overlap, batch_size=batch
                    ),
                    args.repeats,
                    args.device,
                )
                print(
                    f"| {size}x{size} | {overlap} | {batch} | {len(plan.corners)} | {seconds:.3f} "
                    f"| {size * size / seconds / 1e6:.3f} | {work:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
