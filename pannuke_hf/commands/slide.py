"""``pannuke-hf slide SOURCE [SOURCE ...] --model M --out DIR``: every nucleus of whole slides.

A source is a slide file, a folder of slides, a glob or a CSV of slides
(:func:`pannuke_hf.slides.cohort.resolve_sources`). Per slide ``NAME`` (the file name without
extension), in ``--out``: ``NAME.geojson.gz`` (QuPath detections), ``NAME_cells.parquet`` (one
row per nucleus), ``NAME_summary.json``, ``NAME_thumbnail.png``, with ``--label-map`` ``NAME_labels.tiff``; for
the whole run ``cohort_summary.parquet`` / ``.csv`` (one row per slide). A slide whose summary exists is
skipped; an interrupted slide resumes from its finished chunks (``NAME.parts/``). Under
``torchrun`` / ``accelerate launch`` the work is shared between the processes
(:mod:`pannuke_hf.slides.distributed`). Exit codes: 0 every slide done, 1 a slide failed (the
others still run) or the sources name no slide, 2 the command line cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import (
    EXIT_FAILURE,
    EXIT_OK,
    InputError,
    UsageError,
    check_device,
    check_model_source,
    error,
    fail,
)

PROG = "pannuke-hf slide"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment and classify every nucleus of whole-slide images (OpenSlide formats, "
        "pyramidal/OME TIFF, PNG/JPEG) in bounded memory; outputs for QuPath, pandas and the like.",
    )
    p.add_argument(
        "slides", nargs="+", metavar="SOURCE",
        help="slide files, folders of slides, globs ('cohort/*.svs', quoted) or CSV files with a 'slide' column "
        "(optional 'name', 'mpp')",
    )  # fmt: skip
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--mpp", type=float, default=None, help="µm per level-0 pixel, overriding the slide's metadata"
    )
    p.add_argument(
        "--tissue-mask",
        default=None,
        metavar="PNG",
        help="tissue mask image (non-zero = tissue) instead of the automatic one",
    )
    p.add_argument(
        "--reader", choices=("openslide", "tifffile", "image"), default=None, help="force a reader"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--tile-size", type=int, default=None, help="window side in model pixels (default 256)")
    p.add_argument(
        "--overlap", type=int, default=None, help="pixels shared by neighbouring windows (default tile/3)"
    )
    p.add_argument(
        "--region-size",
        type=int,
        default=1024,
        help="side of a post-processing region's core, model pixels (default 1024)",
    )
    p.add_argument(
        "--margin",
        type=int,
        default=96,
        help="context around each region's core, model pixels; wider than the largest nucleus (default 96)",
    )
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: min(4, CPUs / 2))")
    p.add_argument(
        "--postprocess-workers",
        type=int,
        default=None,
        help="post-processing processes (default: CPUs - readers - 1, at least 1)",
    )
    p.add_argument(
        "--min-size", type=int, default=10, help="nuclei with fewer model pixels are dropped (default 10)"
    )
    p.add_argument(
        "--plain-geojson", action="store_true", help="write NAME.geojson instead of NAME.geojson.gz"
    )
    p.add_argument(
        "--label-map", action="store_true",
        help="also write NAME_labels.tiff: the nuclei's classes (0 background, 1-5 as the model's id2label) as a "
        "pyramidal tiled TIFF at the slide's level-0 size, for QuPath and OpenSlide",
    )  # fmt: skip
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 + channels_last on CUDA, fp32 on the CPU",
    )
    p.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads of each process's forward passes (default: the cores the readers and post-processing "
        "leave; results can differ in the last bits with the thread count)",
    )  # fmt: skip
    p.add_argument(
        "--compile", action="store_true",
        help="run the model through torch.compile (tens of seconds of compiling, won back on large slides on a GPU)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--shard", choices=("chunks", "slides"), default="chunks",
        help="under torchrun / accelerate launch: share each slide's chunks between the processes (default), "
        "or give each process whole slides (cohorts of many more slides than processes)",
    )  # fmt: skip
    return p


def default_workers(cpus: int | None = None) -> tuple[int, int]:
    """(reader processes, post-processing processes) for a machine with ``cpus`` cores."""
    cpus = cpus or os.cpu_count() or 2
    readers = max(1, min(4, cpus // 2))
    return readers, max(1, cpus - readers - 1)


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf slide``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    for option, value in (("--batch-size", args.batch_size), ("--region-size", args.region_size)):
        if value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.margin < 0:
        parser.error(f"--margin must be >= 0, got {args.margin}")
    if args.mpp is not None and not args.mpp > 0:
        parser.error(f"--mpp is a pixel size in µm and must be > 0, got {args.mpp}")
    if args.tissue_mask is not None and not Path(args.tissue_mask).is_file():
        parser.error(f"--tissue-mask {args.tissue_mask}: no such file")
    try:
        check_device(args.device)
        check_model_source(args.model)
    except UsageError as err:
        return fail(PROG, err, 2)  # one line naming the option (no usage block)
    except InputError as err:
        return fail(PROG, err)
    from ..slides.distributed import init_processes

    processes = init_processes(args.device)
    try:
        return _run(args, processes)
    finally:
        processes.close()


def _run(args: argparse.Namespace, processes) -> int:
    """Load the model on this process's device, segment the cohort, report each slide."""
    # the cores of this machine are shared by the processes the launcher started on it
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if processes.distributed else 1
    cpus = max(1, (os.cpu_count() or 2) // per_machine)
    readers, post = default_workers(cpus)
    readers = readers if args.workers is None else args.workers
    post = post if args.postprocess_workers is None else args.postprocess_workers

    from ..models.loading import load_model
    from ..slides.cohort import SourceError, segment_cohort
    from ..slides.tiling import RegionGrid, prepare_model

    try:
        model, processor = load_model(args.model, processes.device)
    except (OSError, ValueError) as err:
        return fail(PROG, f"--model {args.model}: {str(err).splitlines()[0]}")
    try:  # window options that cannot work, before any slide (exit 2)
        RegionGrid.build(1, 1, processor, model, args.tile_size, args.overlap, args.region_size, args.margin)
    except ValueError as err:
        return fail(PROG, err, 2)
    model = prepare_model(model, precision=args.precision, compile=args.compile)
    # on the CPU, the forward passes get the cores the readers and post-processing leave
    threads = None if next(model.parameters()).device.type == "cuda" else max(1, cpus - readers - post)
    if args.threads is not None:
        threads = args.threads

    def show(row: dict, summary: dict | None) -> None:
        slide, name = row["slide"], row["name"]
        if row["status"] == "failed":
            error(PROG, row["error"])
        elif row["status"] == "skipped":
            print(f"{slide}: done before ({name}_summary.json exists), skipped", file=sys.stderr)
        elif row["status"] == "partial":
            print(f"warning: {slide}: not finished (run again to resume)", file=sys.stderr)
        else:
            if summary.get("regions_failed"):
                print(
                    f"warning: {slide}: {summary['regions_failed']} region(s) had unreadable parts, skipped "
                    f"(at most {summary['failed_area_mm2']:.3f} mm²; listed in {name}_summary.json)",
                    file=sys.stderr,
                )
            if summary.get("note"):
                print(f"warning: {slide}: {summary['note']}", file=sys.stderr)
            print(
                f"{slide}: {summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm² of tissue -> {args.out}/{name}*"
            )

    try:
        rows = segment_cohort(
            args.slides,
            model,
            processor,
            out_dir=args.out,
            processes=processes,
            shard=args.shard,
            mpp=args.mpp,
            geojson_gzip=not args.plain_geojson,
            label_map=args.label_map,
            progress=not args.no_progress,
            on_slide=show,
            tissue_mask=args.tissue_mask,
            reader=args.reader,
            tile_size=args.tile_size,
            overlap=args.overlap,
            region_size=args.region_size,
            margin=args.margin,
            batch_size=args.batch_size,
            workers=readers,
            postprocess_workers=post,
            min_size=args.min_size,
            threads=threads,
        )
    except SourceError as err:
        return fail(PROG, err)
    if processes.is_main and len(rows) > 1:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "partial")}
        print(
            f"{len(rows)} slides: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
            + f" -> {args.out}/cohort_summary.parquet, .csv"
        )
    return EXIT_FAILURE if any(r["status"] in ("failed", "partial") for r in rows) else EXIT_OK
