"""``pannuke-hf stats``: the class-statistics table of one or more splits, as Markdown."""

from __future__ import annotations

import argparse
import pathlib
import sys

from ..data.splits import SCHEMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pannuke-hf stats",
        description=(
            "Print the class-statistics table (per class: images containing it, percent of pixels) "
            "of PanNuke splits as Markdown. Builds the dataset from the raw folds on first use."
        ),
    )
    parser.add_argument(
        "--data-dir", required=True, help="folder with the raw folds (Fold k/... folders or fold_k.zip files)"
    )
    parser.add_argument(
        "--scheme",
        choices=SCHEMES,
        default=None,
        help="split scheme: 'reference' (train/validation) or fold1/fold2/fold3 (train/validation/test); "
        "default: the raw folds fold1, fold2, fold3",
    )
    parser.add_argument(
        "--split",
        nargs="+",
        default=None,
        metavar="SPLIT",
        help="split(s) to count, one table column pair each (default: every split of the scheme)",
    )
    parser.add_argument("--cache-dir", default=None, help="datasets cache folder")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for the first build")
    parser.add_argument(
        "--void-label",
        type=int,
        default=0,
        help="label of void pixels (0 = background as the reference, or 255)",
    )
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf stats``; returns the exit status."""
    args = _parser().parse_args(argv)
    import datasets

    import pannuke_hf  # noqa: F401  (registers the "pannuke_hf" builder)

    from ..data.splits import make_splits
    from ..data.stats import class_statistics, statistics_table

    folds = datasets.load_dataset(
        "pannuke_hf",
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        num_proc=args.num_proc,
        void_label=args.void_label,
    )
    splits = make_splits(folds, args.scheme) if args.scheme else folds
    names = args.split or list(splits)
    unknown = [name for name in names if name not in splits]
    if unknown:
        print(
            f"pannuke-hf stats: unknown split(s) {unknown}; available with scheme {args.scheme or 'none'}: "
            f"{list(splits)}",
            file=sys.stderr,
        )
        return 2
    table = statistics_table({name: class_statistics(splits[name]) for name in names})
    print(table)
    if args.output:
        pathlib.Path(args.output).write_text(table + "\n")
    return 0
