"""Training throughput (images/s) and the data pipeline's own throughput per worker.

    python benchmarks/bench_train.py                   # CPU: the demo configuration (short)
    python benchmarks/bench_train.py --steps 20        # more timed steps
    python benchmarks/bench_train.py --device cuda     # + the reference run: 512 px, batch 16, fp32 and bf16 + channels_last

Rows: "train" = optimizer steps (forward + backward + SGD) on pre-loaded batches, in images/s;
"data" = decode + resize + flip + photometric distortion + normalise in one process (= one
DataLoader worker), in images/s. The loader keeps up when workers x data rate > train rate.
Generated PanNuke-format data is used; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.data.synthetic import make_synthetic_folds
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation
from pannuke_hf.training.data import collate_segmentation, load_splits, with_transform
from pannuke_hf.training.schedule import build_sgd


def unet_config(base_channels: int, num_stages: int) -> UNetFCNConfig:
    """A UNet-FCN with ``num_stages`` stages of 2 convs (the reference layout) and 6 labels."""
    return UNetFCNConfig(
        base_channels=base_channels,
        num_stages=num_stages,
    )


def data_rate(dataset, count: int) -> float:
    """Images/s of the lazy training transform in this process (one worker's rate)."""
    dataset[0]  # warm-up (decoder, tables)
    start = time.perf_counter()
    for i in range(count):
        dataset[i % len(dataset)]
    return count / (time.perf_counter() - start)


def train_rate(
    config: UNetFCNConfig,
    batch: dict[str, torch.Tensor],
    steps: int,
    warmup: int,
    device: str,
    bf16: bool = False,
    channels_last: bool = False,
) -> float:
    """Images/s of SGD training steps on one fixed batch."""
    model = UNetFCNForSemanticSegmentation(config).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    pixel_values = batch["pixel_values"].to(device).contiguous(memory_format=memory_format)
    labels = batch["labels"].to(device)
    optimizer = build_sgd(model.parameters(), lr=0.01)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * pixel_values.shape[0] / (time.perf_counter() - start)


def main() -> None:
    """Parse options, run the measurements, print a Markdown table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--data-samples", type=int, default=24, help="images timed through the data pipeline")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--demo-size", type=int, default=128)
    parser.add_argument("--demo-batch", type=int, default=4)
    parser.add_argument("--demo-base-channels", type=int, default=8)
    parser.add_argument("--demo-stages", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the generated data goes (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        raw = make_synthetic_folds(work / "raw", 8, seed=0)
        train_split = load_splits(raw, "reference", cache_dir=str(work / "cache"))["train"]

        runs = [
            (
                "demo",
                args.demo_size,
                args.demo_batch,
                args.demo_base_channels,
                args.demo_stages,
                "cpu",
                False,
                False,
            )
        ]
        if args.device == "cuda":
            runs += [
                ("reference fp32", 512, 16, 64, 5, "cuda", False, False),
                ("reference bf16 + channels_last", 512, 16, 64, 5, "cuda", True, True),
            ]
        rows = []
        data_rates: dict[int, float] = {}
        for name, size, batch_size, base, stages, device, bf16, channels_last in runs:
            dataset = with_transform(train_split, size, train=True, augment=True, seed=0)
            if size not in data_rates:
                data_rates[size] = data_rate(dataset, args.data_samples)
            batch = collate_segmentation([dataset[i % len(dataset)] for i in range(batch_size)])
            rate = train_rate(
                unet_config(base, stages), batch, args.steps, args.warmup, device, bf16, channels_last
            )
            workers = rate / data_rates[size]
            rows.append((name, device, size, batch_size, f"{base}/{stages}", rate, data_rates[size], workers))
        if 512 not in data_rates:  # the reference input size: the loader's rate matters on GPUs
            data_rates[512] = data_rate(
                with_transform(train_split, 512, train=True, seed=0), args.data_samples
            )

    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} torch thread(s)"
    )
    print(f"\n### Training throughput ({device_name}; torch {torch.__version__})\n")
    print(
        "| run | device | input | batch | base/stages | train img/s | data img/s per worker | workers needed |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for name, device, size, batch_size, arch, rate, drate, workers in rows:
        print(
            f"| {name} | {device} | {size} | {batch_size} | {arch} | {rate:.1f} | {drate:.1f} | {workers:.1f} |"
        )
    print("\n| data pipeline (decode, resize, flip, photometric, normalise) | input | img/s per worker |")
    print("|---|---:|---:|")
    for size, drate in sorted(data_rates.items()):
        print(f"| training transform | {size} | {drate:.1f} |")


if __name__ == "__main__":
    main()
