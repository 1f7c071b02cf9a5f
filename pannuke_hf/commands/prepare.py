"""``pannuke-hf prepare``: download (optional) and build the PanNuke Arrow dataset, print split sizes."""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, InputError, check_data_dir, fail, void_label


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``pannuke-hf prepare``."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf prepare",
        description="Build the PanNuke Arrow dataset (splits fold1/fold2/fold3) from the raw folds.",
    )
    parser.add_argument(
        "--data-dir",
        help="folder with 'Fold 1'..'Fold 3' or fold_1.zip..fold_3.zip; omitted: download the zips",
    )
    parser.add_argument("--cache-dir", help="datasets cache folder (default: $HF_DATASETS_CACHE)")
    parser.add_argument("--num-proc", type=int, default=None, help="processes for the build")
    parser.add_argument(
        "--base-url", help="download base URL (default: $PANNUKE_BASE_URL or the official one)"
    )
    parser.add_argument(
        "--void-label",
        type=void_label,
        default=0,
        help="label of void pixels: 0 (as the reference) or 255 (ignored)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build the dataset and print a Markdown table of split sizes; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_proc is not None and args.num_proc < 1:
        parser.error(f"--num-proc must be >= 1, got {args.num_proc}")
    try:
        check_data_dir(args.data_dir)
    except InputError as err:
        return fail(parser.prog, err)
    from ..data.builder import PanNuke
    from ..data.raw import PanNukeDataError

    kwargs = {"void_label": args.void_label}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    try:
        builder = PanNuke(data_dir=args.data_dir, cache_dir=args.cache_dir, **kwargs)
        builder.download_and_prepare(num_proc=args.num_proc)
    except PanNukeDataError as err:  # bad or missing raw data: the message names file and patch
        return fail(parser.prog, err)
    splits = builder.info.splits
    print(f"PanNuke built in {builder.cache_dir}\n")
    print("| split | patches |\n|---|--:|")
    for name in sorted(splits):
        print(f"| {name} | {splits[name].num_examples} |")
    print(f"| total | {sum(s.num_examples for s in splits.values())} |")
    return EXIT_OK
