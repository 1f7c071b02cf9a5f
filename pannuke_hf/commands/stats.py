"""``pannuke-hf stats``: the class-statistics table of one or more splits, as Markdown."""

from __future__ import annotations

import argparse
import pathlib

from ..data.splits import SCHEMES
from ._common import EXIT_OK, EXIT_USAGE, InputError, check_data_dir, error, fail, void_label


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
        type=void_label,
        default=0,
        help="label of void pixels (0 = background as the reference, or 255)",
    )
    parser.add_argument("--output", default=None, help="also write the table to this Markdown file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf stats``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        check_data_dir(args.data_dir)
    except InputError as err:
        return fail(parser.prog, err)
    import datasets

    import pannuke_hf  # noqa: F401  (registers the "pannuke_hf" builder)

    from ..data.raw import PanNukeDataError
    from ..data.splits import make_splits
    from ..data.stats import class_statistics, statistics_table

    try:
        folds = datasets.load_dataset(
            "pannuke_hf",
            data_dir=args.data_dir,
            cache_dir=args.cache_dir,
            num_proc=args.num_proc,
            void_label=args.void_label,
        )
    except PanNukeDataError as err:  # bad or missing raw data: the message names file and patch
        return fail(parser.prog, err)
    splits = make_splits(folds, args.scheme) if args.scheme else folds
    names = args.split or list(splits)
    unknown = [name for name in names if name not in splits]
    if unknown:
        scheme = f"with --scheme {args.scheme}" if args.scheme else "without --scheme"
        error(parser.prog, f"--split {' '.join(unknown)}: the splits {scheme} are {', '.join(splits)}")
        return EXIT_USAGE
    table = statistics_table({name: class_statistics(splits[name]) for name in names})
    print(table)
    if args.output:
        pathlib.Path(args.output).write_text(table + "\n")
    return EXIT_OK
