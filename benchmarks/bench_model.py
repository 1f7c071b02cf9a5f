"""Throughput of the UNet-FCN model: inference and training steps (forward + backward + SGD).

Prints a Markdown table: images/s per (mode, precision, size, batch) and, where the FLOP count is
known (the reference width, base 64), the achieved TFLOP/s and the fraction of the card's peak.
The forward pass of the reference model costs about 405 GFLOP per 512x512 image (scaled by
(size / 512)^2); a training step about 3x that.

With ``--versus-mmseg`` it instead compares our model with the reference library's own model
(mmsegmentation's ``UNet`` backbone + ``FCNHead`` as configured by ``fcn_unet_s5-d16``: same
architecture, parameters and FLOPs) on the CPU: eval forward and training step (forward, the same
cross-entropy, backward, SGD with momentum), 256x256, batch 2 by default, the same torch thread
count on both sides. The two run alternately (ours, reference, ours, reference, ...) and each
pair gives one ratio, so load drifting on a shared machine hits both sides alike; the table gives
the median of the per-pair ratios. mmsegmentation is never a dependency of this project: the
comparison runs only where it can be imported (``--mmseg-path`` adds e.g. a
``pip install --target DIR mmsegmentation mmengine mmcv-lite`` folder; with mmcv-lite, whose
compiled ``mmcv.ops`` are missing, a stub module stands in for ``mmcv.ops``, which the UNet and
the FCN head do not use), and the table says so otherwise.

Examples::

    python benchmarks/bench_model.py                                # CPU: short default run
    python benchmarks/bench_model.py --sizes 512 --batch-sizes 16   # one case
    python benchmarks/bench_model.py --device cuda --compile        # GPU: fp32, bf16+channels-last, compiled
    python benchmarks/bench_model.py --versus-mmseg --mmseg-path /tmp/mmref --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import types
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
        model = torch.compile(model, mode=args.compile_mode)
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
    # the training path's SGD: fused on CUDA (PanNukeTrainer), torch's default on the CPU
    fused = True if device.type == "cuda" else None
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused)
        if train
        else None
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


# ------------------------------------------------------------------------------------------------
# Against the reference library's model (mmsegmentation), CPU
# ------------------------------------------------------------------------------------------------


def import_mmseg(path: str | None) -> tuple[type, type] | str:
    """mmsegmentation's ``UNet`` and ``FCNHead`` classes, or why they cannot be imported."""
    if path:
        sys.path.insert(0, path)
    try:
        import mmseg  # noqa: F401
    except ImportError as error:
        return f"mmsegmentation is not installed ({error})"
    try:
        import mmcv.ops  # noqa: F401
    except ImportError:
        # mmcv-lite: no compiled ops. mmseg imports names from mmcv.ops at module level in models
        # the UNet and FCNHead do not use; a stub that fails only when such a name is called.
        class Unavailable:
            def __init__(self, *args, **kwargs):
                raise RuntimeError("mmcv.ops is not available (mmcv-lite)")

        def stub_attribute(name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable

        stub = types.ModuleType("mmcv.ops")
        stub.__path__ = []
        stub.__getattr__ = stub_attribute
        sys.modules["mmcv.ops"] = stub
    try:
        from mmseg.models.backbones import UNet
        from mmseg.models.decode_heads import FCNHead
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=True)  # its registry resolves "InterpConv", "BN", ...
    except Exception as error:  # noqa: BLE001 - any failure of its import chain
        return f"mmsegmentation could not be imported ({type(error).__name__}: {error})"
    return UNet, FCNHead


class MMSegUNetFCN(torch.nn.Module):
    """The reference model: mmsegmentation's UNet backbone + FCNHead as in ``fcn_unet_s5-d16``
    (BN instead of SyncBN on one CPU process; no auxiliary head, as our default config)."""

    def __init__(self, unet_cls: type, head_cls: type, num_labels: int):
        super().__init__()
        norm_cfg = dict(type="BN", requires_grad=True)
        self.backbone = unet_cls(
            in_channels=3,
            base_channels=64,
            num_stages=5,
            strides=(1, 1, 1, 1, 1),
            enc_num_convs=(2, 2, 2, 2, 2),
            dec_num_convs=(2, 2, 2, 2),
            downsamples=(True, True, True, True),
            enc_dilations=(1, 1, 1, 1, 1),
            dec_dilations=(1, 1, 1, 1),
            with_cp=False,
            conv_cfg=None,
            norm_cfg=norm_cfg,
            act_cfg=dict(type="ReLU"),
            upsample_cfg=dict(type="InterpConv"),
            norm_eval=False,
        )
        self.decode_head = head_cls(
            in_channels=64,
            in_index=4,
            channels=64,
            num_convs=1,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_labels,
            norm_cfg=norm_cfg,
            align_corners=False,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(pixel_values))


def versus_mmseg(args: argparse.Namespace) -> str:
    """Markdown table: our model against mmsegmentation's, per mode, interleaved pairs."""
    from pannuke_hf.models.unet_fcn.modeling_unet_fcn import semantic_segmentation_loss

    threads = torch.get_num_threads()
    header = [
        f"Ours vs the reference library's model, CPU ({threads} torch threads, the same on both sides), "
        f"{args.size_vs}x{args.size_vs}, batch {args.batch_vs}; {args.pairs} interleaved pairs of "
        f"{args.iters_vs} steps each after {args.warmup_vs} warm-up steps per side.",
        "",
        "| mode | ours s/step (median) | mmseg s/step (median) | speed ratio ours/mmseg (median of pairs) "
        "| per pair | parameters (ours / mmseg) |",
        "|---|--:|--:|--:|:--|:--|",
    ]
    imported = import_mmseg(args.mmseg_path)
    if isinstance(imported, str):
        return "\n".join(header + [f"| infer, train | - | - | not measured: {imported} | | |"])
    unet_cls, head_cls = imported
    torch.manual_seed(0)
    config = UNetFCNConfig()
    ours = UNetFCNForSemanticSegmentation(config)
    theirs = MMSegUNetFCN(unet_cls, head_cls, config.num_labels)
    params = (sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters()))
    pixel_values = torch.randn(args.batch_vs, 3, args.size_vs, args.size_vs)
    labels = torch.randint(0, config.num_labels, (args.batch_vs, args.size_vs, args.size_vs))
    ignore = config.semantic_loss_ignore_index

    def steppers(mode: str) -> dict:
        def make(model, logits_of):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            model.train(mode == "train")

            def step():
                if mode == "train":
                    loss = semantic_segmentation_loss(logits_of(model), labels, ignore)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                else:
                    with torch.inference_mode():
                        logits_of(model)

            return step

        return {
            "ours": make(ours, lambda m: m(pixel_values).logits),
            "mmseg": make(theirs, lambda m: m(pixel_values)),
        }

    rows = []
    for mode in ("infer", "train"):
        step = steppers(mode)
        for name in step:
            for _ in range(args.warmup_vs):
                step[name]()
        seconds: dict[str, list[float]] = {"ours": [], "mmseg": []}
        for _ in range(args.pairs):
            for name in ("ours", "mmseg"):
                start = time.perf_counter()
                for _ in range(args.iters_vs):
                    step[name]()
                seconds[name].append((time.perf_counter() - start) / args.iters_vs)
        ratios = [theirs_s / ours_s for ours_s, theirs_s in zip(seconds["ours"], seconds["mmseg"])]
        rows.append(
            f"| {mode} | {statistics.median(seconds['ours']):.3f} | {statistics.median(seconds['mmseg']):.3f} | "
            f"{statistics.median(ratios):.2f}x | {' / '.join(f'{r:.2f}' for r in ratios)} | "
            f"{params[0]:,} / {params[1]:,} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(header + rows)


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
        "--compile-mode",
        default=None,
        help="torch.compile mode (default, reduce-overhead = CUDA graphs, max-autotune-no-cudagraphs, ...)",
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default 1 on CPU, 5 on CUDA)"
    )
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 2 on CPU, 20 on CUDA)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--base-channels", type=int, default=64, help="model width (64 = reference)")
    parser.add_argument(
        "--versus-mmseg", action="store_true", help="compare with mmsegmentation's model on the CPU instead"
    )
    parser.add_argument("--mmseg-path", default=None, help="folder to import mmsegmentation from")
    parser.add_argument("--size-vs", type=int, default=256, help="image size for --versus-mmseg")
    parser.add_argument("--batch-vs", type=int, default=2, help="batch size for --versus-mmseg")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved (ours, mmseg) pairs")
    parser.add_argument("--iters-vs", type=int, default=2, help="steps per side and pair")
    parser.add_argument("--warmup-vs", type=int, default=2, help="untimed steps per side and mode")
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
    if args.versus_mmseg:
        print(versus_mmseg(args))
        return 0
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
