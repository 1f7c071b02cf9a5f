"""Training throughput: the model alone beside the whole ``train.py``, per precision setting.

    python benchmarks/bench_train.py --device cuda                 # the reference setting: 512 px, batch 16
    python benchmarks/bench_train.py --device cpu --size 64 --batch 2 --base-channels 8 --num-stages 3 \\
        --model-steps 2 --e2e-steps 6 --e2e-warmup 2 --logging-steps 2 --patches-per-fold 6   # a smoke run

For each setting (``fp32``; ``bf16-cl`` = bf16 autocast + channels-last; ``bf16-cl-compile`` = the
same + ``torch.compile``):

* **model only**: SGD training steps (forward, loss, backward, fused SGD on CUDA) of the model that
  ``train.py`` builds, on one batch already on the device; images/s over ``--model-steps`` steps
  after ``--model-warmup`` untimed ones (the first step's time, compilation included, is reported);
* **end to end**: ``train.py`` with the reference configuration (real data path: generated
  PanNuke-format folds -> Arrow dataset -> lazy augmentation in ``--workers`` DataLoader workers ->
  Trainer), run as a subprocess. Its Trainer log lines (every ``--logging-steps`` steps) are
  timestamped as they arrive; the steady rate is taken between the first line at or after
  ``--e2e-warmup`` steps and the last one, so start-up, cuDNN autotuning and compilation are left
  out (their time is reported separately).

Columns: images/s, end to end as % of model only, % of the dense bf16 peak (989 TFLOP/s on H100 /
H200; a training step of the reference model costs ~1.2 TFLOP per 512x512 image, scaled by area;
only for the reference width), the projected time of the reference run (20,000 steps x batch 16)
at that rate, peak GPU memory after warm-up, and mean GPU busy (``nvidia-smi`` sampled every
0.5 s) over the timed window. ``--profile-dir`` adds one profiled bf16 step (eager and, when
measured, compiled): the top kernels by GPU time and a breakdown by kind. Results go to stdout
and, with ``--out-json`` / ``--out-md``, to files (rewritten after every measurement, so a run cut
short keeps what it measured). Generated data only; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import FORWARD_GFLOP_512, TRAIN_FLOP_FACTOR, detect_peak_tflops  # noqa: E402

#: The reference run: configuration file, steps and batch (mmsegmentation's 1xb16 20k).
REFERENCE_CONFIG = ROOT / "configs" / "fcn-unet-s5-d16_1xb16-0.01-20k_pannuke-512x512.yaml"
REFERENCE_STEPS = 20_000
REFERENCE_BATCH = 16
#: Precision settings: bf16 autocast, channels-last model and batches, torch.compile (mode).
SETTINGS: dict[str, dict] = {
    "fp32": {"bf16": False, "channels_last": False, "compile": None},
    "bf16-cl": {"bf16": True, "channels_last": True, "compile": None},
    "bf16-cl-compile": {"bf16": True, "channels_last": True, "compile": "default"},
    # model only: the compiled step replayed as CUDA graphs
    "bf16-cl-compile-cudagraphs": {"bf16": True, "channels_last": True, "compile": "reduce-overhead"},
    # model only: Inductor tunes the block sizes of its fused kernels (the BatchNorm reductions
    # and pointwise passes over the full-resolution maps) and runs 1x1 convolutions as matmuls
    "bf16-cl-compile-tuned": {
        "bf16": True,
        "channels_last": True,
        "compile": "default",
        "inductor": {"coordinate_descent_tuning": True, "conv_1x1_as_mm": True},
    },
    # model only: Triton templates timed against cuDNN for every convolution (long compilation)
    "bf16-cl-compile-autotune": {
        "bf16": True,
        "channels_last": True,
        "compile": "max-autotune-no-cudagraphs",
    },
}
#: Trainer log lines (PrinterCallback prints the logs dict): a training-loss line.
LOSS_LINE = re.compile(r"^\{.*'loss':")


# ------------------------------------------------------------------------------------------------
# GPU-busy sampling
# ------------------------------------------------------------------------------------------------


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 0.5 s in a background process, timestamped here."""

    def __init__(self, log_path: Path | None) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, busy %, memory MiB)
        self.process = None
        self.log = open(log_path, "w") if log_path else None  # noqa: SIM115 - closed in stop()
        if shutil.which("nvidia-smi") is None:
            return
        self.process = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "500",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            now = time.time()
            try:
                busy, memory = (float(v) for v in line.strip().split(",")[:2])
            except ValueError:
                continue
            self.samples.append((now, busy, memory))
            if self.log:
                self.log.write(f"{now:.3f},{busy:g},{memory:g}\n")

    def mean_busy(self, start: float, end: float) -> float | None:
        """Mean GPU busy % of the samples between ``start`` and ``end`` (time.time())."""
        values = [busy for t, busy, _ in self.samples if start <= t <= end]
        return sum(values) / len(values) if values else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
        if self.log:
            self.log.close()


# ------------------------------------------------------------------------------------------------
# Model only
# ------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(args: argparse.Namespace, setting: str, device: torch.device):
    """The model ``train.py`` builds, an SGD step on one fixed batch, and the model's parameters."""
    from pannuke_hf.training.arguments import ModelArguments
    from pannuke_hf.training.run import build_model
    from pannuke_hf.training.schedule import build_sgd

    spec = SETTINGS[setting]
    torch.manual_seed(0)
    model, _ = build_model(
        ModelArguments(base_channels=args.base_channels, num_stages=args.num_stages), args.size
    )
    model.to(device).train()
    memory_format = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    model.to(memory_format=memory_format)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_sgd(parameters, lr=0.01, fused=True if device.type == "cuda" else None)
    runner = model if spec["compile"] is None else torch.compile(model, mode=spec["compile"])
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, device=device)
    pixel_values = pixel_values.contiguous(memory_format=memory_format)
    labels = torch.randint(0, model.config.num_labels, (args.batch, args.size, args.size), device=device)

    def step() -> None:
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if spec["bf16"] else contextlib.nullcontext()
        )
        with autocast:
            loss = runner(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def model_only(args: argparse.Namespace, setting: str, device: torch.device, sampler: GpuSampler):
    """Images/s of the model alone; returns (result dict, the step function for profiling)."""
    inductor = SETTINGS[setting].get("inductor")
    if inductor:  # compilation happens at the first step: the options hold for the whole measurement
        import torch._inductor.config

        with torch._inductor.config.patch(**inductor):
            return _model_only(args, setting, device, sampler)
    return _model_only(args, setting, device, sampler)


def _model_only(args: argparse.Namespace, setting: str, device: torch.device, sampler: GpuSampler):
    step = make_step(args, setting, device)
    start = time.perf_counter()
    step()
    synchronize(device)
    first_step_s = time.perf_counter() - start
    for _ in range(max(args.model_warmup - 1, 0)):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # cuDNN's autotuning tried workspace-hungry algorithms
    wall_start, start = time.time(), time.perf_counter()
    for _ in range(args.model_steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {
        "images_per_s": args.model_steps * args.batch / seconds,
        "first_step_s": first_step_s,
        "memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "gpu_busy": sampler.mean_busy(wall_start, time.time()),
    }
    return result, step


# ------------------------------------------------------------------------------------------------
# Profile of one step
# ------------------------------------------------------------------------------------------------

#: Kernel-name fragments -> kind, first match wins (cuDNN / CUTLASS convolution kernel names vary).
KERNEL_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("triton (compiled, fused)", ("triton",)),
    ("optimizer", ("sgd", "multi_tensor", "foreach")),
    ("batch norm", ("batch_norm", "batchnorm", "bn_fw", "bn_bw", "welford")),
    (
        "convolution",
        ("conv", "cudnn", "xmma", "implicit", "sm90", "sm80", "cutlass", "gemm", "wgrad", "dgrad", "fprop"),
    ),
    ("upsample", ("upsample",)),
    ("max pool", ("max_pool", "maxpool")),
    ("concat / copy", ("cat", "copy", "memcpy", "memset", "fill")),
    ("loss", ("nll", "softmax", "cross_entropy")),
    (
        "elementwise (relu, dropout, ...)",
        ("elementwise", "vectorized", "threshold", "relu", "dropout", "fused_"),
    ),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KERNEL_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "other"


def profile_step(step, device: torch.device, label: str, path: Path, rows: int = 25) -> dict:
    """Profile one step (after one more warm-up step); write the table and return the breakdown."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    synchronize(device)
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    events = prof.key_averages()
    on_gpu = device.type == "cuda"

    def self_time(event) -> float:
        if not on_gpu:
            return float(event.self_cpu_time_total)
        for attribute in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(event, attribute):
                return float(getattr(event, attribute))
        return 0.0

    if on_gpu:
        kernels = [
            e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA") and self_time(e) > 0
        ]
        if not kernels:  # older profilers do not mark kernel rows
            kernels = [e for e in events if self_time(e) > 0 and not e.key.startswith("aten::")]
    else:
        kernels = [e for e in events if self_time(e) > 0]
    total = sum(self_time(e) for e in kernels) or 1.0
    breakdown: dict[str, float] = {}
    for event in kernels:
        kind = kernel_kind(event.key)
        breakdown[kind] = breakdown.get(kind, 0.0) + self_time(event)
    top = sorted(kernels, key=self_time, reverse=True)[:rows]
    unit = "GPU" if on_gpu else "CPU"
    lines = [
        f"## One training step, {label} ({unit} time {total / 1000:.1f} ms)",
        "",
        f"| kind | {unit} ms | share |",
        "|---|--:|--:|",
        *(
            f"| {kind} | {value / 1000:.2f} | {100 * value / total:.1f}% |"
            for kind, value in sorted(breakdown.items(), key=lambda item: -item[1])
        ),
        "",
        f"| top kernels by {unit} time | calls | {unit} ms | share |",
        "|---|--:|--:|--:|",
        *(
            f"| `{e.key[:110]}` | {e.count} | {self_time(e) / 1000:.2f} | {100 * self_time(e) / total:.1f}% |"
            for e in top
        ),
    ]
    sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort_key, row_limit=rows)
    except (KeyError, AttributeError, ValueError):
        table = events.table(
            sort_by="self_cuda_time_total" if on_gpu else "self_cpu_time_total", row_limit=rows
        )
    text = "\n".join(lines) + "\n\n```\n" + table + "\n```\n"
    path.write_text(text)
    print(text, flush=True)
    return {"step_ms": total / 1000, "breakdown_ms": {k: v / 1000 for k, v in breakdown.items()}}


# ------------------------------------------------------------------------------------------------
# End to end: train.py
# ------------------------------------------------------------------------------------------------


def prepare_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict]:
    """Generate the folds (unless ``--data-dir`` holds them) and build the Arrow dataset once."""
    from pannuke_hf.data.synthetic import make_synthetic_folds
    from pannuke_hf.training.data import load_splits, with_transform

    timings = {}
    data_dir = Path(args.data_dir) if args.data_dir else work / "raw"
    cache_dir = Path(args.cache_dir) if args.cache_dir else work / "cache"
    if not (data_dir / "Fold 1").is_dir():
        start = time.perf_counter()
        make_synthetic_folds(data_dir, args.patches_per_fold, seed=0)
        timings["generate_s"] = time.perf_counter() - start
    start = time.perf_counter()
    splits = load_splits(data_dir, "reference", cache_dir=str(cache_dir), num_proc=args.build_num_proc)
    timings["arrow_build_s"] = time.perf_counter() - start
    timings["train_images"] = len(splits["train"])
    timings["validation_images"] = len(splits["validation"])
    # The training transform in this one process = one DataLoader worker's rate.
    dataset = with_transform(splits["train"], args.size, train=True, augment=True, seed=0)
    dataset[0]
    count = min(args.data_samples, len(dataset))
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    timings["transform_images_per_s_per_worker"] = round(count / (time.perf_counter() - start), 1)
    print(f"data: {data_dir} ({timings})", flush=True)
    return data_dir, cache_dir, timings


def train_command(
    args: argparse.Namespace, setting: str, device: torch.device, data: Path, cache: Path, out: Path
):
    """The ``train.py`` command line of one end-to-end run (the reference configuration, overridden)."""
    spec = SETTINGS[setting]
    flag = {True: "true", False: "false"}
    command = [
        sys.executable, "-u", str(ROOT / "train.py"), str(REFERENCE_CONFIG),
        "--data_dir", str(data), "--synthetic_data", "false", "--dataset_cache_dir", str(cache),
        "--output_dir", str(out), "--image_size", str(args.size),
        "--base_channels", str(args.base_channels), "--num_stages", str(args.num_stages),
        "--per_device_train_batch_size", str(args.batch), "--per_device_eval_batch_size", str(args.batch),
        "--max_steps", str(args.e2e_steps), "--logging_steps", str(args.logging_steps),
        "--eval_strategy", "no", "--save_strategy", "no",
        "--do_eval", flag[args.eval_samples > 0], "--max_eval_samples", str(max(args.eval_samples, 1)),
        "--disable_tqdm", "true", "--report_to", "none",
        "--dataloader_num_workers", str(args.workers), "--dataloader_drop_last", "true",
        "--bf16", flag[spec["bf16"]], "--channels_last", flag[spec["channels_last"]],
        "--torch_compile", flag[spec["compile"] is not None],
    ]  # fmt: skip
    if spec["compile"] not in (None, "default"):
        command += ["--torch_compile_mode", spec["compile"]]
    if device.type == "cpu":
        command += ["--use_cpu", "true", "--torch_num_threads", str(args.threads)]
    return command


def end_to_end(args, setting, device, data: Path, cache: Path, work: Path, sampler: GpuSampler, log) -> dict:
    """Run ``train.py``; steady images/s from the timestamps of its loss log lines."""
    out = work / f"run-{setting}"
    shutil.rmtree(out, ignore_errors=True)
    command = train_command(args, setting, device, data, cache, out)
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    launched = time.time()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        cwd=str(ROOT),
    )
    timer = threading.Timer(args.e2e_timeout, process.kill)
    timer.start()
    stamps: list[float] = []
    tail: list[str] = []
    try:
        for line in process.stdout:
            now = time.time()
            log.write(line)
            tail = (tail + [line.rstrip()])[-15:]
            if LOSS_LINE.match(line.strip()):
                stamps.append(now)
        returncode = process.wait()
    finally:
        timer.cancel()
    log.flush()
    result: dict = {"returncode": returncode, "log_lines": len(stamps)}
    if returncode != 0:
        result["error"] = f"train.py exited {returncode}: " + " / ".join(tail[-3:])
        print("\n".join(tail), flush=True)
        return result
    steps = [(i + 1) * args.logging_steps for i in range(len(stamps))]
    window = [(s, t) for s, t in zip(steps, stamps) if s >= args.e2e_warmup]
    if len(window) < 2:
        result["error"] = f"too few log lines after {args.e2e_warmup} warm-up steps ({len(stamps)} in all)"
        return result
    (first_step, first_time), (last_step, last_time) = window[0], window[-1]
    result.update(
        images_per_s=(last_step - first_step) * args.batch / (last_time - first_time),
        timed_steps=last_step - first_step,
        startup_and_warmup_s=first_time - launched,
        wall_s=time.time() - launched,
        gpu_busy=sampler.mean_busy(first_time, last_time),
    )
    eval_file = out / "eval_results.json"
    if eval_file.is_file():
        metrics = json.loads(eval_file.read_text())
        result["eval_mean_iou"] = metrics.get("eval_mean_iou")
        result["eval_runtime_s"] = metrics.get("eval_runtime")
    return result


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def train_tflop_per_image(args: argparse.Namespace) -> float | None:
    """TFLOP of one training step per image for the reference width (None for other models)."""
    if args.base_channels != 64 or args.num_stages != 5:
        return None
    return FORWARD_GFLOP_512 * TRAIN_FLOP_FACTOR / 1000 * (args.size / 512) ** 2


def fmt(value, pattern: str = "{:.1f}", missing: str = "-") -> str:
    return (
        missing
        if value is None or (isinstance(value, float) and math.isnan(value))
        else pattern.format(value)
    )


def report(args, device_name: str, versions: str, peak: float | None, results: dict) -> str:
    """Markdown: the side-by-side table, then the notes."""
    tflop = train_tflop_per_image(args)
    lines = [
        f"### Training throughput: {device_name}; {versions}",
        "",
        f"{args.size}x{args.size}, batch {args.batch}, UNet-FCN base {args.base_channels} / {args.num_stages} stages; "
        f"model only: {args.model_steps} steps after {args.model_warmup}; end to end: `train.py` "
        f"{REFERENCE_CONFIG.name}, {args.workers} workers, steady rate from step {args.e2e_warmup} to "
        f"{args.e2e_steps}; reference run = {REFERENCE_STEPS:,} steps x {REFERENCE_BATCH}; "
        f"peak {fmt(peak, '{:g}', 'n/a')} TFLOP/s (bf16 dense).",
        "",
        "| setting | model only img/s | end to end img/s | e2e / model | % of peak (model / e2e) "
        "| reference run, min (model / e2e) | first step s (model) | start-up + warm-up s (e2e) "
        "| peak mem GiB | GPU busy % (model / e2e) | eval mIoU (e2e) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for setting in SETTINGS:
        model = results["model_only"].get(setting)
        e2e = results["end_to_end"].get(setting)
        if model is None and e2e is None:
            continue
        model, e2e = model or {}, e2e or {}
        m_rate, e_rate = model.get("images_per_s"), e2e.get("images_per_s")

        def percent(rate):
            return None if rate is None or tflop is None or not peak else 100 * rate * tflop / peak

        def minutes(rate):
            return None if not rate else REFERENCE_STEPS * REFERENCE_BATCH / rate / 60

        ratio = 100 * e_rate / m_rate if m_rate and e_rate else None
        m_text = (model.get("error") or fmt(m_rate)).replace("|", "/")
        e_text = (e2e.get("error") or fmt(e_rate)).replace("|", "/")
        lines.append(
            f"| {setting} | {m_text} | {e_text} | {fmt(ratio, '{:.0f}%')} "
            f"| {fmt(percent(m_rate))} / {fmt(percent(e_rate))} | {fmt(minutes(m_rate))} / {fmt(minutes(e_rate))} "
            f"| {fmt(model.get('first_step_s'))} | {fmt(e2e.get('startup_and_warmup_s'))} "
            f"| {fmt(model.get('memory_gib'))} | {fmt(model.get('gpu_busy'), '{:.0f}')} / "
            f"{fmt(e2e.get('gpu_busy'), '{:.0f}')} | {fmt(e2e.get('eval_mean_iou'), '{:.4f}')} |"
        )
    lines += [
        "",
        "Targets (one H200): end to end >= 90% of model only; model only >= 300 img/s in bf16; "
        "reference run <= 20 min.",
    ]
    if results.get("data"):
        lines.append(f"Data: {results['data']}.")
    if results.get("skipped"):
        lines.append(f"Skipped (time budget): {', '.join(results['skipped'])}.")
    for label, profile in results.get("profiles", {}).items():
        kinds = ", ".join(
            f"{kind} {ms:.1f} ms"
            for kind, ms in sorted(profile["breakdown_ms"].items(), key=lambda item: -item[1])
        )
        lines.append(f"Profile {label}: {profile['step_ms']:.1f} ms per step: {kinds}.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--size", type=int, default=512, help="input side (the reference: 512)")
    parser.add_argument("--batch", type=int, default=REFERENCE_BATCH, help="batch size (the reference: 16)")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--num-stages", type=int, default=5)
    parser.add_argument(
        "--settings", nargs="+", default=["fp32", "bf16-cl", "bf16-cl-compile"], choices=list(SETTINGS),
        help="model-only settings, in order",
    )  # fmt: skip
    parser.add_argument(
        "--e2e-settings", nargs="+", default=None, choices=list(SETTINGS),
        help="end-to-end settings, in order (default: --settings); empty with --no-e2e",
    )  # fmt: skip
    parser.add_argument(
        "--extra-settings", nargs="*", default=[], choices=list(SETTINGS),
        help="model-only settings run last, only while the time budget lasts",
    )  # fmt: skip
    parser.add_argument("--no-e2e", action="store_true", help="model only")
    parser.add_argument("--model-steps", type=int, default=20)
    parser.add_argument("--model-warmup", type=int, default=5)
    parser.add_argument("--e2e-steps", type=int, default=120, help="max_steps of each train.py run")
    parser.add_argument("--e2e-warmup", type=int, default=40, help="steps left out of the steady rate")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=32, help="evaluate after training (0: no)")
    parser.add_argument(
        "--e2e-timeout", type=float, default=240.0, help="seconds before a train.py run is killed"
    )
    parser.add_argument("--workers", type=int, default=8, help="DataLoader workers of train.py")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    parser.add_argument("--patches-per-fold", type=int, default=160, help="generated patches per fold (x3)")
    parser.add_argument("--data-samples", type=int, default=32, help="images timed through the transform")
    parser.add_argument(
        "--build-num-proc", type=int, default=None, help="processes building the Arrow dataset"
    )
    parser.add_argument(
        "--data-dir", default=None, help="raw folds to use (default: generated into --workdir)"
    )
    parser.add_argument("--cache-dir", default=None, help="datasets cache (default: in --workdir)")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--profile-dir", default=None, help="write profile_<setting>.md here (bf16 steps)")
    parser.add_argument("--smi-log", default=None, help="write the raw nvidia-smi samples here")
    parser.add_argument("--out-json", default=None)
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--time-budget-s", type=float, default=None, help="skip what would start after this")
    parser.add_argument("--log", default=None, help="append the train.py output here (default: stderr)")
    args = parser.parse_args(argv)
    if args.e2e_settings is None:
        args.e2e_settings = [] if args.no_e2e else list(args.settings)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (
        args.log,
        args.out_json,
        args.out_md,
        args.smi_log,
        args.profile_dir and args.profile_dir + "/x",
    ):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_train.py: error: --device cuda: no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads) if device.type == "cpu" else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as PanNukeTrainer does on CUDA
    began = time.time()
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if device.type == "cuda":
        versions += f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({args.threads} thread(s))"
    )
    peak = detect_peak_tflops(device)
    sampler = GpuSampler(Path(args.smi_log) if args.smi_log else None)
    results: dict = {"device": device_name, "versions": versions, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "args": vars(args), "model_only": {}, "end_to_end": {}, "profiles": {}, "skipped": []}  # fmt: skip
    log = open(args.log, "a") if args.log else sys.stderr  # noqa: SIM115

    def save() -> None:
        text = report(args, device_name, versions, peak, results)
        if args.out_json:
            Path(args.out_json).write_text(json.dumps(results, indent=1, default=str))
        if args.out_md:
            Path(args.out_md).write_text(text)

    def in_budget(what: str) -> bool:
        if args.time_budget_s is None or time.time() - began < args.time_budget_s:
            return True
        results["skipped"].append(what)
        print(f"skipped (time budget): {what}", flush=True)
        return False

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        steps = {}
        for setting in args.settings:
            if not in_budget(f"model only {setting}"):
                continue
            try:
                results["model_only"][setting], steps[setting] = model_only(args, setting, device, sampler)
            except Exception as error:  # noqa: BLE001 - reported in the table, the other rows still run
                results["model_only"][setting] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            print(f"model only {setting}: {results['model_only'][setting]}", flush=True)
            save()
        if args.profile_dir:
            for setting in ("bf16-cl", "bf16-cl-compile"):
                if setting in steps and in_budget(f"profile {setting}"):
                    try:
                        path = Path(args.profile_dir) / f"profile_{setting}.md"
                        results["profiles"][setting] = profile_step(steps[setting], device, setting, path)
                    except Exception as error:  # noqa: BLE001
                        print(f"profile {setting} failed: {type(error).__name__}: {error}", flush=True)
            save()
        # Free the parent's models before train.py needs the GPU.
        steps.clear()
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.e2e_settings and in_budget("end to end (data)"):
            data, cache, results["data"] = prepare_data(args, work)
            save()
            for setting in args.e2e_settings:
                if not in_budget(f"end to end {setting}"):
                    continue
                results["end_to_end"][setting] = end_to_end(
                    args, setting, device, data, cache, work, sampler, log
                )
                print(f"end to end {setting}: {results['end_to_end'][setting]}", flush=True)
                save()
        for setting in args.extra_settings:
            if not in_budget(f"model only {setting}"):
                continue
            torch._dynamo.reset()  # compile afresh, with this setting's options
            try:
                results["model_only"][setting], _ = model_only(args, setting, device, sampler)
            except Exception as error:  # noqa: BLE001
                results["model_only"][setting] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            print(f"model only {setting}: {results['model_only'][setting]}", flush=True)
            save()
    sampler.stop()
    save()
    print()
    print(report(args, device_name, versions, peak, results))
    failed = any("error" in r for part in ("model_only", "end_to_end") for r in results[part].values())
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
