"""``pannuke-hf make-synthetic-slide OUT.tiff --size WxH``: a generated pyramidal slide and its true nuclei."""

from __future__ import annotations

import argparse
import time

from ._common import EXIT_FAILURE, fail


def parse_size(value: str) -> tuple[int, int]:
    """``argparse`` type of ``--size``: ``WxH`` in pixels, both >= 1."""
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT in pixels (e.g. 4096x3072), got {value!r}"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be >= 1, got {value!r}")
    return width, height


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pannuke-hf make-synthetic-slide",
        description=(
            "Write a generated whole slide: an Aperio-style pyramidal tiled JPEG TIFF that OpenSlide "
            "opens, with its µm/px, tissue and background, nuclei from the PanNuke-like generator; and "
            "its true nuclei beside it (OUT_truth.tiff: uint32 instance ids at level 0; "
            "OUT_truth.parquet: id, label_id, class)."
        ),
    )
    p.add_argument("out", metavar="OUT.tiff", help="the slide to write")
    p.add_argument("--size", type=parse_size, required=True, metavar="WxH", help="level-0 size in pixels")
    p.add_argument("--mpp", type=float, default=0.25, help="µm per level-0 pixel (default 0.25, 40x)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--tissue-fraction",
        type=float,
        default=0.6,
        help="share of the slide that is tissue (default 0.6, at most 0.93)",
    )
    p.add_argument(
        "--touching", type=float, default=0.6, help="probability of touching same-class pairs (default 0.6)"
    )
    p.add_argument("--no-truth", action="store_true", help="do not write the true nuclei (faster)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the tiles (default 90)")
    p.add_argument("--workers", type=int, default=None, help="threads (default: the CPU count)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf make-synthetic-slide``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.mpp > 0:
        parser.error(f"--mpp must be > 0, got {args.mpp}")
    if not 0.0 < args.tissue_fraction <= 1.0:
        parser.error(f"--tissue-fraction must lie in (0, 1], got {args.tissue_fraction}")
    if not 0.0 <= args.touching <= 1.0:
        parser.error(f"--touching must lie in [0, 1], got {args.touching}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must lie in [1, 100], got {args.quality}")
    from ..slides.synthetic import make_synthetic_slide

    start = time.perf_counter()
    width, height = args.size
    try:
        result = make_synthetic_slide(
            args.out,
            width,
            height,
            mpp=args.mpp,
            seed=args.seed,
            tissue_fraction=args.tissue_fraction,
            touching=args.touching,
            truth=not args.no_truth,
            quality=args.quality,
            workers=args.workers,
        )
    except OSError as err:
        return fail("pannuke-hf make-synthetic-slide", f"{args.out}: {err.strerror or err}", EXIT_FAILURE)
    nuclei = f", {result['nuclei']} true nuclei" if "nuclei" in result else ""
    print(
        f"wrote {args.out} ({width}x{height} px at {args.mpp} µm/px, {len(result['levels'])} levels{nuclei}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0
