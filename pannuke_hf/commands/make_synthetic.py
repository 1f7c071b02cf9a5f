"""``pannuke-hf make-synthetic OUT``: write generated folds in the exact raw PanNuke format."""

from __future__ import annotations

import argparse
import time

from ..constants import FOLDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pannuke-hf make-synthetic",
        description=(
            "Write generated PanNuke-like folds (Fold k/images/foldk/images.npy, types.npy, "
            "Fold k/masks/foldk/masks.npy; or fold_k.zip with --zip), with the release's quirks. "
            "Give OUT as --data-dir to the other commands."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder (created if needed)")
    parser.add_argument(
        "--patches-per-fold", type=int, default=8, metavar="N", help="patches per fold (default 8)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed of the generated release (default 0)"
    )
    parser.add_argument("--zip", action="store_true", help="write fold_k.zip files instead of folders")
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=list(FOLDS),
        choices=FOLDS,
        help="folds to write (default 1 2 3)",
    )
    parser.add_argument(
        "--no-quirks",
        action="store_true",
        help="make every patch ordinary (no empty, void, overlap, split-id patch)",
    )
    parser.add_argument(
        "--touching",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a touching same-class pair of nuclei per 2x2 block of grid cells "
        "(about P/2 of the nuclei touch one; default 0: nuclei never touch)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf make-synthetic``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.patches_per_fold < 1:
        _parser().error("--patches-per-fold must be >= 1")
    if not 0.0 <= args.touching <= 1.0:
        _parser().error(f"--touching must lie in [0, 1], got {args.touching}")
    from ..data.synthetic import make_synthetic_folds

    start = time.perf_counter()
    out = make_synthetic_folds(
        args.out,
        patches_per_fold=args.patches_per_fold,
        seed=args.seed,
        as_zip=args.zip,
        folds=args.folds,
        quirks=not args.no_quirks,
        touching=args.touching,
    )
    total = args.patches_per_fold * len(args.folds)
    kind = "zips" if args.zip else "folders"
    print(
        f"wrote {total} generated patches ({kind}, folds {args.folds}) to {out} in {time.perf_counter() - start:.1f} s"
    )
    return 0
