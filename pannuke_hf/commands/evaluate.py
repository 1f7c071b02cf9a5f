"""``pannuke-hf evaluate``: score a checkpoint on a PanNuke split, print the table, write JSON + Markdown.

pannuke-hf evaluate --model outputs/run --data-dir /data/pannuke --split validation
torchrun --nproc_per_node 4 -m pannuke_hf.commands.evaluate --model ... --data-dir ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, InputError, check_data_dir, check_model_source, error


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf evaluate",
        description="Score a segmentation checkpoint on a PanNuke split (mIoU, mDice, per-class table; "
        "mPQ, bPQ, F1_d for nuclei).",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--data-dir", required=True, help="folder with the raw folds (Fold k/ or fold_k.zip)")
    parser.add_argument(
        "--split", default="validation", help="train, validation or (fold1/fold2/fold3 schemes) test"
    )
    parser.add_argument(
        "--split-scheme",
        default="reference",
        choices=["reference", "fold1", "fold2", "fold3"],
        help="how folds are split",
    )
    parser.add_argument(
        "--out", default=None, help="output folder (default: <model>/eval-<split> or ./eval-<split>)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass and process")
    parser.add_argument(
        "--image-size", type=int, default=None, help="model input side (default: the processor's)"
    )
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N images")
    parser.add_argument("--cache-dir", default=None, help="datasets cache folder")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU")
    parser.add_argument(
        "--nuclei",
        choices=["auto", "yes", "no"],
        default="auto",
        help="also score nuclei (mPQ, bPQ, F1_d); auto: when the model has an instance head",
    )
    parser.add_argument(
        "--nuclei-from",
        choices=["auto", "hv", "watershed", "components"],
        default="auto",
        help="how nuclei are made: the hv head (auto when present), else the semantic map split by "
        "a watershed, or plain connected components",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0, 1 when data or model cannot be used, 2 for a bad command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for option, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size)):
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max-samples must be >= 1, got {args.max_samples}")
    splits = ("train", "validation") if args.split_scheme == "reference" else ("train", "validation", "test")
    if args.split not in splits:
        parser.print_usage(sys.stderr)
        error(
            parser.prog,
            f"--split {args.split}: --split-scheme {args.split_scheme} has the splits {', '.join(splits)}",
        )
        return EXIT_USAGE
    try:
        check_model_source(args.model)
        check_data_dir(args.data_dir)
    except InputError as err:
        error(parser.prog, err)
        return EXIT_FAILURE
    out = args.out or str(
        Path(args.model) / f"eval-{args.split}" if Path(args.model).is_dir() else f"eval-{args.split}"
    )
    from ..training.evaluation import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(
            args.model,
            args.data_dir,
            split=args.split,
            split_scheme=args.split_scheme,
            out_dir=out,
            batch_size=args.batch_size,
            image_size=args.image_size,
            max_samples=args.max_samples,
            cache_dir=args.cache_dir,
            num_workers=args.num_workers,
            use_cpu=args.cpu,
            instance_metrics={"auto": None, "yes": True, "no": False}[args.nuclei],
            instance_mode=args.nuclei_from,
        )
    except (ValueError, OSError, KeyError) as err:
        if os.environ.get("PANNUKE_HF_TRACEBACK"):
            raise
        error(parser.prog, err)
        return EXIT_FAILURE
    if "results" in metrics:
        print(f"wrote {out}/results.json and {out}/results.md")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
