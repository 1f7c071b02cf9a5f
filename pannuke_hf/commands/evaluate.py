"""``pannuke-hf evaluate``: score a checkpoint on a PanNuke split, print the table, write JSON + Markdown.

pannuke-hf evaluate --model outputs/run --data-dir /data/pannuke --split validation
torchrun --nproc_per_node 4 -m pannuke_hf.commands.evaluate --model ... --data-dir ...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf evaluate",
        description="Score a segmentation checkpoint on a PanNuke split (mIoU, mDice, per-class table).",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub id")
    parser.add_argument("--data-dir", required=True, help="folder with the raw folds (Fold k/ or fold_k.zip)")
    parser.add_argument("--split", default="validation", help="train, validation or (fold schemes) test")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0, or 2 with a message on bad input."""
    args = build_parser().parse_args(argv)
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
        )
    except (ValueError, FileNotFoundError, KeyError) as error:
        if os.environ.get("PANNUKE_HF_TRACEBACK"):
            raise
        print(f"pannuke-hf evaluate: error: {error}", file=sys.stderr)
        return 2
    if "results" in metrics:
        print(f"wrote {out}/results.json and {out}/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
