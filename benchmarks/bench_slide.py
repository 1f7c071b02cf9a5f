"""Benchmark: whole slides (``pannuke-hf slide``) by size: memory, seconds per stage, s/mm², accuracy.

For each ``--sizes`` entry a slide is generated (``make_synthetic_slide``: pyramidal JPEG TIFF,
0.25 µm/px unless ``--mpp``, with its true nuclei) and segmented by ``segment_slide`` in a
child process whose whole process tree (DataLoader readers, post-processing pool) is sampled
for resident memory every 0.2 s. With ``--device cuda`` ``nvidia-smi`` is sampled every second
for the GPU's busy percentage. With a trained ``--model`` and the truth, the slide's nucleus
scores are computed on ``--score-blocks`` random 256x256 blocks of tissue (PanNuke's protocol:
per-block PQ, mPQ over classes, bPQ binary; cut nuclei are cut in both truth and prediction, as
in PanNuke's patches) and printed beside the model's patch-level figures (its ``results.json``).

Printed per slide: Gpx, tissue mm², nuclei, windows, inference windows/s, seconds per stage
(read and post-process are summed over their worker processes, i.e. CPU-seconds; infer and
write are wall seconds of the main process), wall seconds, s/mm², peak memory of the process tree
(GB, PSS: proportional set size, shared pages counted once), GPU busy (%), slide mPQ / bPQ and the patch-level mPQ / bPQ.

Usage::

    python benchmarks/bench_slide.py --model demo_instances_output --sizes 16384x16384 23168x23168 32768x32768
    python benchmarks/bench_slide.py --device cuda --model-preset reference-hv --sizes 65536x65536 --out $OUT/slide
    python benchmarks/bench_slide.py --device cpu --sizes 2048x2048 --out /tmp/bench-slide   # a quick check
    python benchmarks/bench_slide.py --model demo_output --sizes 16384x16384 --processes 1 2 --score-blocks 0

``--processes 1 2``: each slide once by one process, then by two under ``torchrun`` (the slide's
chunks shared out, see ``pannuke_hf.slides.distributed``); the ``same files`` column says whether
the second run's files are byte-identical to the first's; memory is summed over all processes.

The slide of each size is kept in ``--out`` and reused by later runs (``--regenerate`` to redo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes", nargs="+", default=["16384x16384", "23168x23168", "32768x32768"], help="slides WxH"
    )
    p.add_argument("--mpp", type=float, default=0.25, help="µm/px of the generated slides")
    p.add_argument(
        "--tissue-fraction", type=float, default=0.6, help="share of tissue of the generated slides"
    )
    p.add_argument("--model", default=None, help="a checkpoint folder (else --model-preset, random weights)")
    p.add_argument(
        "--model-preset",
        choices=("demo", "reference-hv"),
        default="demo",
        help="random-weight model when --model is not given: demo (base 8, 3 stages, hv head, 128 px inputs) "
        "or reference-hv (the reference UNet-FCN, base 64, 5 stages, + hv head, 512 px inputs)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (default 8 on CPU, 64 on CUDA)"
    )
    p.add_argument("--overlap", type=int, default=None, help="window overlap (default tile/3)")
    p.add_argument(
        "--region-size",
        type=int,
        default=None,
        help="region core, model pixels (default 1024 on the CPU, 2048 on CUDA)",
    )
    p.add_argument("--margin", type=int, default=96)
    p.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1],
        metavar="N",
        help="segment each slide with N processes (torchrun; the slide's chunks shared out, one GPU each with "
        "--device cuda); several values: one row each, the files compared with the first value's",
    )
    p.add_argument("--workers", type=int, default=None, help="reader processes (default as pannuke-hf slide)")
    p.add_argument(
        "--postprocess-workers",
        type=int,
        default=None,
        help="post-processing processes (default as pannuke-hf slide)",
    )
    p.add_argument("--out", default=None, help="folder for slides and outputs (default: a temporary folder)")
    p.add_argument("--regenerate", action="store_true", help="generate the slides again even if present")
    p.add_argument(
        "--score-blocks", type=int, default=300, help="256x256 blocks scored against the truth (0: no scores)"
    )
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--_run-one", dest="run_one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_outputs", dest="outputs", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_model(args: argparse.Namespace):
    """(model, processor) from --model or the preset (random weights)."""
    import torch

    if args.model:
        from pannuke_hf.models.loading import load_model

        return load_model(args.model, args.device)
    from pannuke_hf.models.unet_fcn import (
        UNetFCNConfig,
        UNetFCNForSemanticSegmentation,
        UNetFCNImageProcessor,
    )

    torch.manual_seed(0)
    if args.model_preset == "demo":
        config = UNetFCNConfig(
            base_channels=8, num_stages=3, head_channels=8, instance_head="hv", classifier_init_std=0.2
        )
        processor = UNetFCNImageProcessor(size={"height": 128, "width": 128})
    else:
        config = UNetFCNConfig(instance_head="hv")
        processor = UNetFCNImageProcessor()
    return UNetFCNForSemanticSegmentation(config).to(args.device).eval(), processor


def run_one(args: argparse.Namespace) -> None:
    """Child process (each torchrun process): segment one slide, print the summary as JSON on the last line."""
    from pannuke_hf.commands.slide import default_workers
    from pannuke_hf.slides.distributed import init_processes, segment_slide_shared
    from pannuke_hf.slides.tiling import prepare_model

    processes = init_processes(args.device)
    args.device = processes.device  # cuda -> cuda:LOCAL_RANK under torchrun
    model, processor = build_model(args)
    model = prepare_model(model, precision=args.precision)
    # the machine's cores are shared by the processes torchrun started on it
    cpus = max(1, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    readers, post = default_workers(cpus)
    readers = readers if args.workers is None else args.workers
    post = post if args.postprocess_workers is None else args.postprocess_workers
    cuda = args.device.startswith("cuda")
    summary = segment_slide_shared(
        args.run_one,
        model,
        processes,
        processor=processor,
        out_dir=args.outputs,
        batch_size=args.batch_size or (64 if cuda else 8),
        overlap=args.overlap,
        region_size=args.region_size or (2048 if cuda else 1024),
        margin=args.margin,
        threads=None if cuda else max(1, cpus - readers - post),
        workers=readers,
        postprocess_workers=post,
        progress=False,
    )
    if processes.is_main:
        print(json.dumps(summary, default=float), flush=True)
    processes.close()


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    except psutil.AccessDenied:  # pragma: no cover
        return 0
    total = 0
    for p in procs:
        try:
            # PSS: shared pages (torch's libraries in forked workers) counted once, not per process
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class GpuSampler:
    """``nvidia-smi`` utilisation sampled every second in the background."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.proc = subprocess.Popen(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-l",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.values.append(float(line.split(",")[0]))
            except ValueError:
                pass

    def stop(self) -> dict[str, float | None]:
        self.proc.terminate()
        busy = [v for v in self.values]
        return {
            "gpu_busy_mean": float(np.mean(busy)) if busy else None,
            # the share of samples with the GPU busy at all, and the mean over those (inference phase)
            "gpu_busy_active_mean": float(np.mean([v for v in busy if v > 0]))
            if any(v > 0 for v in busy)
            else None,
        }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def segment_measured(args: argparse.Namespace, slide: Path, outputs: Path, processes: int = 1) -> dict:
    """Run one slide in a child process (``processes`` > 1: under torchrun); returns its summary plus
    the peak memory (PSS) of all its processes and GPU figures."""
    import shutil

    shutil.rmtree(outputs, ignore_errors=True)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                     "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]  # fmt: skip
    cmd = [
        *launcher,
        __file__,
        "--_run-one",
        str(slide),
        "--_outputs",
        str(outputs),
        "--device",
        args.device,
        "--precision",
        args.precision,
        "--margin",
        str(args.margin),
        "--model-preset",
        args.model_preset,
    ]
    for opt, value in (
        ("--model", args.model),
        ("--batch-size", args.batch_size),
        ("--overlap", args.overlap),
        ("--region-size", args.region_size),
        ("--workers", args.workers),
        ("--postprocess-workers", args.postprocess_workers),
    ):
        if value is not None:
            cmd += [opt, str(value)]
    gpu = GpuSampler() if args.device.startswith("cuda") else None
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    peak, samples = 0, []
    while proc.poll() is None:
        rss = _tree_rss(proc.pid)
        peak = max(peak, rss)
        samples.append(rss)
        time.sleep(0.2)
    out = proc.stdout.read()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"segmenting {slide} failed (exit {proc.returncode})")
    summary = json.loads(out.strip().splitlines()[-1])
    summary["bench_wall_seconds"] = wall
    summary["peak_rss_gb"] = peak / 1e9
    if gpu is not None:
        summary.update(gpu.stop())
    return summary


def score_slide(slide: Path, outputs: Path, blocks: int, seed: int = 0) -> dict[str, float]:
    """Slide mPQ / bPQ on random 256x256 tissue blocks against the generated truth."""
    import pyarrow.parquet as pq
    from skimage.draw import polygon

    from pannuke_hf.metrics.pq import PanNukeInstanceMetrics
    from pannuke_hf.slides.synthetic import read_truth_region

    name = slide.stem
    truth_tiff = slide.with_name(name + "_truth.tiff")
    truth_table = pq.read_table(slide.with_name(name + "_truth.parquet")).to_pydict()
    true_class = dict(zip(truth_table["id"], truth_table["label_id"]))
    cells = pq.read_table(
        outputs / f"{name}_cells.parquet",
        columns=["id", "label_id", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "outline"],
    )
    x0 = cells["bbox_x0"].to_numpy()
    y0 = cells["bbox_y0"].to_numpy()
    x1 = cells["bbox_x1"].to_numpy()
    y1 = cells["bbox_y1"].to_numpy()
    labels = cells["label_id"].to_numpy()
    outlines = cells["outline"]
    # blocks centred on true nuclei's regions: pick random positions, keep those holding truth
    import tifffile

    with tifffile.TiffFile(truth_tiff) as tf:
        H, W = tf.pages[0].shape[:2]
    rng = np.random.default_rng(seed)
    metric = PanNukeInstanceMetrics()
    scored = tries = 0
    while scored < blocks and tries < blocks * 20:
        tries += 1
        bx, by = int(rng.integers(0, max(1, W - 256))), int(rng.integers(0, max(1, H - 256)))
        truth = read_truth_region(truth_tiff, bx, by, 256, 256).astype(np.int64)
        if not truth.any():
            continue
        pred = np.zeros((256, 256), dtype=np.int32)
        pred_class = {}
        hit = np.flatnonzero((x0 < bx + 256) & (x1 > bx) & (y0 < by + 256) & (y1 > by))
        for k, i in enumerate(hit.tolist(), start=1):
            # outer rings (holes are rare in nuclei); pixels whose centre lies inside the outline
            for ring in _wkt_rings(outlines[i].as_py())[:1]:
                rr, cc = polygon(ring[:, 1] - by - 0.5, ring[:, 0] - bx - 0.5, shape=(256, 256))
                mask = np.zeros((256, 256), dtype=bool)
                mask[rr, cc] = True
            pred[mask > 0] = k
            pred_class[k] = int(labels[i])
        ids = np.unique(truth)
        ids = ids[ids > 0]
        t_map = np.where(truth > 0, np.searchsorted(ids, truth) + 1, 0)
        t_cls = {k + 1: true_class[int(g)] for k, g in enumerate(ids.tolist())}
        present = set(np.unique(pred).tolist()) - {0}
        metric.update(t_map, t_cls, pred, {k: v for k, v in pred_class.items() if k in present})
        scored += 1
    result = metric.compute()
    return {"mPQ": float(result["mPQ"]), "bPQ": float(result["bPQ"]), "blocks": scored}


def _wkt_rings(wkt: str) -> list[np.ndarray]:
    """Rings of a WKT POLYGON / MULTIPOLYGON as (N, 2) arrays (enough for rasterising)."""
    import re

    rings = re.findall(r"\(([-0-9.e ,]+)\)", wkt)
    return [np.array([[float(v) for v in p.split()] for p in ring.split(",")]) for ring in rings]


def patch_figures(model: str | None) -> dict[str, float | None]:
    """The model's patch-level mPQ / bPQ from its results.json (training evaluation), if any."""
    if not model or not (Path(model) / "results.json").is_file():
        return {"mPQ": None, "bPQ": None}
    text = (Path(model) / "results.json").read_text()
    data = json.loads(text)

    def find(obj, key):
        if isinstance(obj, dict):
            if key in obj and isinstance(obj[key], int | float):
                return float(obj[key])
            for v in obj.values():
                found = find(v, key)
                if found is not None:
                    return found
        return None

    return {"mPQ": find(data, "mPQ"), "bPQ": find(data, "bPQ")}


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.run_one:
        run_one(args)
        return
    import torch

    from pannuke_hf.slides.synthetic import make_synthetic_slide

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-slide-"))
    out.mkdir(parents=True, exist_ok=True)
    device_name = (
        torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    )
    print(
        f"device: {device_name}; torch {torch.__version__}; model: {args.model or args.model_preset + ' (random weights)'}"
    )
    patch = patch_figures(args.model)
    rows = []
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        mpp_text = f"{args.mpp:g}".replace(".", "p")
        slide = out / f"slide_{w}x{h}_{mpp_text}um.tiff"
        gen_seconds = None
        if args.regenerate or not slide.is_file():
            start = time.perf_counter()
            make_synthetic_slide(
                slide, w, h, mpp=args.mpp, tissue_fraction=args.tissue_fraction, truth=args.score_blocks > 0
            )
            gen_seconds = time.perf_counter() - start
            print(f"generated {slide.name} in {gen_seconds:.1f} s", flush=True)
        for n in args.processes:
            outputs = out / (f"out_{w}x{h}" if n == 1 else f"out_{w}x{h}_{n}proc")
            summary = segment_measured(args, slide, outputs, n)
            first = args.processes[0]
            same = None
            if n != first:  # sharing the slide out changes no byte of its files
                ref = out / (f"out_{w}x{h}" if first == 1 else f"out_{w}x{h}_{first}proc")
                same = all(
                    (ref / f"{slide.stem}{suffix}").read_bytes()
                    == (outputs / f"{slide.stem}{suffix}").read_bytes()
                    for suffix in ("_cells.parquet", ".geojson.gz", "_thumbnail.png")
                )
            scores = {"mPQ": None, "bPQ": None}
            if args.score_blocks > 0 and slide.with_name(slide.stem + "_truth.tiff").is_file():
                scores = score_slide(slide, outputs, args.score_blocks)
            s = summary["seconds"]
            row = {
                "slide": f"{w}x{h}",
                "processes": n,
                "same_files": same,
                "gpx": w * h / 1e9,
                "tissue_mm2": summary["tissue_mm2"],
                "nuclei": summary["nuclei"],
                "windows": summary["windows"],
                "windows_per_s": summary["tiles_per_second"],
                "read_s": s["read"],
                "infer_s": s["infer"],
                "post_s": s["post_process"],
                "write_s": s["write"],
                "wall_s": summary["bench_wall_seconds"],
                "s_per_mm2": summary["bench_wall_seconds"] / summary["tissue_mm2"]
                if summary["tissue_mm2"]
                else None,
                "peak_rss_gb": summary["peak_rss_gb"],
                "gpu_busy": summary.get("gpu_busy_active_mean"),
                "slide_mPQ": scores["mPQ"],
                "slide_bPQ": scores["bPQ"],
                "patch_mPQ": patch["mPQ"],
                "patch_bPQ": patch["bPQ"],
                "generate_s": gen_seconds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (
        "| slide | processes | Gpx | tissue mm² | nuclei | windows | windows/s | read s | infer s | post s | write s | wall s "
        "| s/mm² | peak memory GB | GPU busy % | slide mPQ | slide bPQ | patch mPQ | patch bPQ | same files |"
    )
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        pct = lambda v: _fmt(None if v is None else 100 * v)  # noqa: E731
        print(
            f"| {r['slide']} | {r['processes']} | {r['gpx']:.2f} | {r['tissue_mm2']:.1f} | {r['nuclei']} | {r['windows']} | {_fmt(r['windows_per_s'], '.0f')} "
            f"| {r['read_s']:.0f} | {r['infer_s']:.0f} | {r['post_s']:.0f} | {r['write_s']:.0f} | {r['wall_s']:.0f} "
            f"| {_fmt(r['s_per_mm2'])} | {r['peak_rss_gb']:.2f} | {_fmt(r['gpu_busy'], '.0f')} "
            f"| {pct(r['slide_mPQ'])} | {pct(r['slide_bPQ'])} | {pct(r['patch_mPQ'])} | {pct(r['patch_bPQ'])} "
            f"| {'-' if r['same_files'] is None else ('yes' if r['same_files'] else 'NO')} |"
        )
    peaks = [r["peak_rss_gb"] for r in rows if r["processes"] == args.processes[0]]
    if len(peaks) > 1:
        print(
            f"\npeak memory: largest / smallest = {max(peaks) / min(peaks):.2f} (flat: <= 1.20); largest {max(peaks):.2f} GB (target < 3)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
