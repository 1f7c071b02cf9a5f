"""``pannuke-hf evaluate``: score a checkpoint on a PanNuke split, print the table, write JSON + Markdown.

pannuke-hf evaluate --model outputs/run --data-dir /data/pannuke --split validation
torchrun --nproc_per_node 4 -m pannuke_hf.commands.evaluate --model ... --data-dir ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import (
    EXIT_OK,
    UsageError,
    check_data_dir,
    check_model_source,
    read_model_config,
    void_label,
)


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
        default=None,
        choices=["reference", "fold1", "fold2", "fold3"],
        help="how folds are split (default: the scheme the checkpoint was trained with, as its config.json, "
        "training results or model card record it; else reference)",
    )
    parser.add_argument(
        "--allow-training-data",
        action="store_true",
        help="score a split that holds patches the checkpoint was trained on (refused by default; the "
        "results then say so)",
    )
    parser.add_argument(
        "--void-label",
        type=void_label,
        default=None,
        help="label of void pixels: 0 (background, as the reference) or 255 (left out of the metrics); "
        "default: the checkpoint's training value, else 0",
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
        help="also score nuclei (mPQ, bPQ, F1_d); auto: when the model has an instance head or "
        "--nuclei-from is given",
    )
    parser.add_argument(
        "--nuclei-from",
        choices=["auto", "hv", "watershed", "components"],
        default="auto",
        help="how nuclei are made: the hv head (auto when present, needs a model with it), else the "
        "semantic map split by a watershed, or plain connected components; giving it scores nuclei",
    )
    return parser


def resolve_split_scheme(requested: str | None, record: dict | None) -> tuple[str, str]:
    """The split scheme to use and why: the one asked for, else the checkpoint's, else ``reference``."""
    if requested is not None:
        return requested, "--split-scheme"
    if record and record.get("split_scheme"):
        return str(record["split_scheme"]), "the checkpoint's training scheme"
    return "reference", "default; the checkpoint records no training scheme"


def nuclei_options(nuclei: str, nuclei_from: str, instance_head: str | None) -> tuple[bool, str]:
    """``(score nuclei, post-processing)`` from ``--nuclei`` / ``--nuclei-from`` and the model's head.

    Raises:
        UsageError: ``--nuclei-from`` with ``--nuclei no``, or ``hv`` for a model without that head.
    """
    if nuclei == "no" and nuclei_from != "auto":
        raise UsageError(f"--nuclei-from {nuclei_from} scores nuclei: it does not go with --nuclei no")
    if nuclei_from == "hv" and instance_head != "hv":
        raise UsageError(
            "--nuclei-from hv needs a model with the hv instance head (config instance_head='hv'); this "
            "one has none: use --nuclei-from watershed or components"
        )
    score = {"yes": True, "no": False}.get(nuclei, instance_head is not None or nuclei_from != "auto")
    mode = nuclei_from if nuclei_from != "auto" else ("hv" if instance_head == "hv" else "watershed")
    return score, mode


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns 0, 1 when data or model cannot be used, 2 for a bad command line.

    Errors are raised (``UsageError`` -> 2, ``InputError`` / ``ValueError`` / ``OSError`` -> 1) and
    reported by :func:`pannuke_hf.cli.main`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    for option, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size)):
        if value is not None and value < 1:
            parser.error(f"{option} must be >= 1, got {value}")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.split_scheme is not None:
        _check_split(args.split, args.split_scheme, "--split-scheme")
    # the model and the data before any work (a mistyped --model must not build the dataset first)
    check_model_source(args.model)
    check_data_dir(args.data_dir)
    config = read_model_config(args.model)
    from ..data.splits import read_training_record, split_overlaps_training

    record = (
        (config or {}).get("training_data") if isinstance((config or {}).get("training_data"), dict) else None
    )
    record = record or read_training_record(args.model)
    scheme, why = resolve_split_scheme(args.split_scheme, record)
    _check_split(args.split, scheme, why)
    overlap = bool(record) and split_overlaps_training(record["split_scheme"], scheme, args.split)
    if overlap and not args.allow_training_data:
        trained = record["split_scheme"]
        held_out = "--split validation" if trained == "reference" else "--split validation or test"
        raise UsageError(
            f"--split {args.split} of split scheme {scheme} holds patches {args.model} was trained on (its "
            f"split scheme {trained}, split train): its scores would flatter the model. Score {held_out} "
            f"of --split-scheme {trained}, or pass --allow-training-data to score it anyway"
        )
    if overlap:
        print(
            f"WARNING: --split {args.split} ({scheme}) holds training patches of this checkpoint "
            f"(trained with split scheme {record['split_scheme']}); the scores are not a held-out result",
            file=sys.stderr,
            flush=True,
        )
    instance_head = (config or {}).get("instance_head")
    score_nuclei, mode = nuclei_options(args.nuclei, args.nuclei_from, instance_head)
    void = args.void_label if args.void_label is not None else int((record or {}).get("void_label", 0))
    print(f"split scheme {scheme} ({why}), split {args.split}, void pixels labelled {void}", flush=True)
    out = args.out or str(
        Path(args.model) / f"eval-{args.split}" if Path(args.model).is_dir() else f"eval-{args.split}"
    )
    from ..training.evaluation import evaluate_checkpoint

    extra = {
        "trained_split_scheme": record["split_scheme"] if record else None,
        "overlaps_training_data": overlap,
    }
    if score_nuclei:
        extra["nuclei_from"] = mode
    metrics = evaluate_checkpoint(
        args.model,
        args.data_dir,
        split=args.split,
        split_scheme=scheme,
        out_dir=out,
        batch_size=args.batch_size,
        image_size=args.image_size,
        max_samples=args.max_samples,
        cache_dir=args.cache_dir,
        num_workers=args.num_workers,
        use_cpu=args.cpu,
        instance_metrics=score_nuclei,
        instance_mode=mode,
        void_label=void,
        extra=extra,
    )
    if "results" in metrics:
        print(f"wrote {out}/results.json and {out}/results.md")
    return EXIT_OK


def _check_split(split: str, scheme: str, why: str) -> None:
    splits = ("train", "validation") if scheme == "reference" else ("train", "validation", "test")
    if split not in splits:
        raise UsageError(f"--split {split}: split scheme {scheme} ({why}) has the splits {', '.join(splits)}")


if __name__ == "__main__":
    from ..cli import main as cli_main

    sys.exit(cli_main(["evaluate", *sys.argv[1:]]))
