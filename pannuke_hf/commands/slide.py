"""``pannuke-hf slide SLIDE [SLIDE ...] --model M --out DIR``: every nucleus of whole slides.

Per slide ``NAME`` (the file name without extension), in ``--out``: ``NAME.geojson.gz`` (QuPath
detections), ``NAME_cells.parquet`` (one row per nucleus), ``NAME_summary.json``,
``NAME_thumbnail.png``. A slide whose summary exists is skipped; an interrupted slide resumes
from its finished chunks (``NAME.parts/``). Exit codes: 0 every slide done, 1 a slide failed
(the others still run), 2 the command line cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import EXIT_FAILURE, EXIT_OK, InputError, UsageError, check_device, check_model_source, fail

PROG = "pannuke-hf slide"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment and classify every nucleus of whole-slide images (OpenSlide formats, "
        "pyramidal/OME TIFF, PNG/JPEG) in bounded memory; outputs for QuPath, pandas and the like.",
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files")
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
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 + channels_last on CUDA, fp32 on the CPU",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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
    readers, post = default_workers()
    readers = readers if args.workers is None else args.workers
    post = post if args.postprocess_workers is None else args.postprocess_workers

    from ..models.loading import load_model
    from ..slides.pipeline import segment_slide
    from ..slides.reading import SlideError
    from ..slides.tiling import prepare_model
    from ..slides.writing import output_paths, slide_name

    try:
        model, processor = load_model(args.model, args.device)
    except (OSError, ValueError) as err:
        return fail(PROG, f"--model {args.model}: {str(err).splitlines()[0]}")
    model = prepare_model(model, precision=args.precision)
    # on the CPU, the forward passes get the cores the readers and post-processing leave
    threads = (
        None
        if next(model.parameters()).device.type == "cuda"
        else max(1, (os.cpu_count() or 2) - readers - post)
    )
    status = EXIT_OK
    for slide in args.slides:
        name = slide_name(slide)
        if output_paths(args.out, name)["summary"].is_file():
            print(f"{slide}: done before ({name}_summary.json exists), skipped", file=sys.stderr)
            continue
        try:
            summary = segment_slide(
                slide,
                model,
                processor,
                out_dir=args.out,
                name=name,
                mpp=args.mpp,
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
                geojson_gzip=not args.plain_geojson,
                progress=not args.no_progress,
            )
        except SlideError as err:
            fail(PROG, err)
            status = EXIT_FAILURE
            continue
        except ValueError as err:  # e.g. --overlap not below the tile size
            return fail(PROG, err, 2)
        if summary.get("regions_failed"):
            print(
                f"warning: {slide}: {summary['regions_failed']} region(s) could not be read and were skipped "
                f"(~{summary['failed_area_mm2']:.3f} mm²; listed in {name}_summary.json)",
                file=sys.stderr,
            )
        if summary.get("note"):
            print(f"warning: {slide}: {summary['note']}", file=sys.stderr)
        print(
            f"{slide}: {summary['nuclei']} nuclei in {summary['tissue_mm2']:.2f} mm² of tissue -> {args.out}/{name}*"
        )
    return status
