"""Throughput of the UNet-FCN model: inference and training steps (forward + backward + SGD).

Prints a Markdown table: images/s per (mode, precision, size, batch) and, where the FLOP count is
known (the reference width, base 64), the achieved TFLOP/s and the fraction of the card's peak.
The forward pass of the reference model costs about 405 GFLOP per 512x512 image (scaled by
(size / 512)^2); a training step about 3x that.

Examples::

    python benchmarks/bench_model.py                                # CPU: short default run
    python benchmarks/bench_model.py --sizes 512 --batch-sizes 16   # one case
    python benchmarks/bench_model.py --device cuda --compile        # GPU: fp32, bf16+channels-last, compiled
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass

import torch

from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation

#: Forward GFLOP of the reference model (base 64) per 512x512 image; training ~3x.
FORWARD_GFLOP_512 = 405.0
TRAIN_FLOP_FACTOR = 3.0
#: Dense bf16 peak TFLOP/s by device-name fragment (tensor cores, no sparsity).
KNOWN_PEAKS_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "4090": 165.0}


@dataclass
class Case:
    """One benchmark row."""

    mode: str  # "infer" or "train"
    precision: str  # "fp32", "bf16-cl" (bf16 autocast + channels-last), "+compile" suffix
    size: int
    batch: int


def detect_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of the current CUDA device when its name is known, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in KNOWN_PEAKS_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def forward_gflop(size: int, base_channels: int) -> float | None:
    """Forward GFLOP per image at ``size`` for the reference width (None for other widths)."""
    if base_channels != 64:
        return None
    return FORWARD_GFLOP_512 * (size / 512) ** 2


def build_model(args, precision: str, device: torch.device, train: bool) -> torch.nn.Module:
    """A fresh model for one precision setting (channels-last and compile applied here)."""
    config = UNetFCNConfig(base_channels=args.base_channels, head_channels=args.base_channels)
    model = UNetFCNForSemanticSegmentation(config).to(device)
    if "cl" in precision:
        model = model.to(memory_format=torch.channels_last)
    model.train(train)
    if precision.endswith("+compile"):
        model = torch.compile(model)
    return model


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast for the bf16 settings, nothing for fp32."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(args, case: Case, device: torch.device) -> dict:
    """Time one case; returns images/s and peak memory, or an error string (e.g. out of memory)."""
    torch.manual_seed(0)
    train = case.mode == "train"
    model = build_model(args, case.precision, device, train)
    memory_format = torch.channels_last if "cl" in case.precision else torch.contiguous_format
    pixel_values = torch.randn(case.batch, 3, case.size, case.size, device=device).contiguous(
        memory_format=memory_format
    )
    labels = torch.randint(0, model.config.num_labels, (case.batch, case.size, case.size), device=device)
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) if train else None
    )

    def step():
        if train:
            with autocast_context(case.precision, device):
                loss = model(pixel_values, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast_context(case.precision, device):
                model(pixel_values)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"images_per_s": case.batch * args.iters / seconds, "memory_gib": memory}


def cases(args, device: torch.device) -> list[Case]:
    """Every (mode, precision, size, batch) to run, within ``--max-batch-pixels``."""
    if args.precisions:
        precisions = list(args.precisions)
    else:
        precisions = ["fp32", "bf16-cl"] if device.type == "cuda" else ["fp32"]
    if args.compile:
        precisions += [f"{p}+compile" for p in precisions if not p.endswith("+compile")]
    selected = []
    for mode in args.modes:
        for precision in precisions:
            for size in args.sizes:
                for batch in args.batch_sizes:
                    if args.max_batch_pixels and batch * size * size > args.max_batch_pixels:
                        continue
                    selected.append(Case(mode, precision, size, batch))
    return selected


def format_table(
    rows: list[tuple[Case, dict]], base_channels: int, peak: float | None, device_name: str
) -> str:
    """Markdown table of the results."""
    lines = [
        f"Device: {device_name}; model: UNet-FCN base {base_channels}; peak used: "
        + (f"{peak:g} TFLOP/s (bf16 dense)" if peak else "n/a"),
        "",
        "| mode | precision | size | batch | images/s | TFLOP/s | % of peak | peak mem (GiB) |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for case, result in rows:
        if "error" in result:
            lines.append(
                f"| {case.mode} | {case.precision} | {case.size} | {case.batch} | {result['error']} | | | |"
            )
            continue
        gflop = forward_gflop(case.size, base_channels)
        tflops = fraction = ""
        if gflop is not None:
            factor = TRAIN_FLOP_FACTOR if case.mode == "train" else 1.0
            achieved = result["images_per_s"] * gflop * factor / 1000.0
            tflops = f"{achieved:.3g}"
            fraction = f"{100 * achieved / peak:.1f}%" if peak else ""
        memory = f"{result['memory_gib']:.1f}" if result["memory_gib"] is not None else ""
        lines.append(
            f"| {case.mode} | {case.precision} | {case.size} | {case.batch} | "
            f"{result['images_per_s']:.3g} | {tflops} | {fraction} | {memory} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument(
        "--max-batch-pixels",
        type=int,
        default=None,
        help="skip cases with batch*size*size above this (default: 4 x 256^2 on CPU, no limit on CUDA)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        help="fp32 and/or bf16-cl (default: fp32 on CPU, both on CUDA)",
    )
    parser.add_argument("--compile", action="store_true", help="also run every precision with torch.compile")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1 on CPU, 5 on CUDA)"
    )
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 2 on CPU, 20 on CUDA)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--base-channels", type=int, default=64, help="model width (64 = reference)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak for the %% column (default: detected)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    args.iters = args.iters if args.iters is not None else (20 if on_cuda else 2)
    if args.max_batch_pixels is None and not on_cuda:
        args.max_batch_pixels = 4 * 256 * 256
    peak = args.peak_tflops or detect_peak_tflops(device)
    device_name = (
        torch.cuda.get_device_name(device) if on_cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    )

    rows = []
    for case in cases(args, device):
        try:
            result = run_case(args, case, device)
        except torch.OutOfMemoryError:
            result = {"error": "out of memory"}
        except RuntimeError as error:  # e.g. CPU allocation failure
            if "memory" not in str(error).lower():
                raise
            result = {"error": "out of memory"}
        finally:
            if on_cuda:
                torch.cuda.empty_cache()
        rows.append((case, result))
        print(f"  done: {case}: {result}", flush=True)
    print()
    print(format_table(rows, args.base_channels, peak, device_name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
