"""``pannuke-hf export``: PanNuke as Parquet shards + dataset card; optionally push to the Hub.

Examples::

    pannuke-hf export --data-dir raw/ --out pannuke-parquet
    pannuke-hf export --data-dir raw/ --out pannuke-parquet --push-to-hub me/pannuke --private

The folder then loads with plain ``datasets.load_dataset("pannuke-parquet")``, the Hub copy with
``load_dataset("me/pannuke")``; neither needs this package.
"""

from __future__ import annotations

import argparse

from ..data.export import DEFAULT_MAX_SHARD_SIZE
from ._common import InputError, check_data_dir, fail, void_label


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``pannuke-hf export``."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf export",
        description=(
            "Build PanNuke from the raw folds and write it as Parquet shards (splits fold1/fold2/fold3) "
            "plus a dataset card README.md, loadable with plain `datasets.load_dataset(OUT)`; "
            "optionally publish it as a Hub dataset repository."
        ),
    )
    parser.add_argument(
        "--data-dir",
        help="folder with 'Fold 1'..'Fold 3' or fold_1.zip..fold_3.zip; omitted: download the official zips",
    )
    parser.add_argument("--out", required=True, help="output folder (new, empty, or a previous export)")
    parser.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="also upload to this Hub dataset repository ('user/name'), created if needed; "
        "token from HF_TOKEN or `hf auth login`",
    )
    parser.add_argument("--private", action="store_true", help="make the Hub repository private")
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest size of one Parquet shard, e.g. 500MB or 1GB (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    parser.add_argument(
        "--cache-dir", help="datasets cache folder for the build (default: $HF_DATASETS_CACHE)"
    )
    parser.add_argument("--num-proc", type=int, default=None, help="processes for the build")
    parser.add_argument(
        "--void-label",
        type=void_label,
        default=0,
        help="label of void pixels: 0 (background, as the reference) or 255 (ignored)",
    )
    parser.add_argument("--base-url", help="download base URL when --data-dir is omitted")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf export``; prints a summary table; exit status 0, 2 on bad input, 1 if the Hub refuses."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        parser.error("--private only applies with --push-to-hub REPO")
    if args.num_proc is not None and args.num_proc < 1:
        parser.error(f"--num-proc must be >= 1, got {args.num_proc}")
    from datasets.utils.py_utils import convert_file_size_to_int

    try:
        shard_bytes = convert_file_size_to_int(args.max_shard_size)
    except ValueError:
        shard_bytes = 0
    if shard_bytes <= 0:
        parser.error(
            f"--max-shard-size {args.max_shard_size}: expected a size such as 500MB, 1GB or a byte count"
        )
    try:
        check_data_dir(args.data_dir)
    except InputError as err:
        return fail(parser.prog, err)

    from ..data.export import build_folds, create_dataset_repo, export_dataset, push_export
    from ..data.raw import PanNukeDataError

    try:
        folds = build_folds(
            args.data_dir,
            cache_dir=args.cache_dir,
            num_proc=args.num_proc,
            void_label=args.void_label,
            base_url=args.base_url,
        )
        repo_id = None
        if args.push_to_hub:
            # Create the repository first: the card then shows its full id ("user/name").
            try:
                repo_id = create_dataset_repo(args.push_to_hub, private=args.private).repo_id
            except Exception as err:  # noqa: BLE001 - HTTP, auth and network errors (httpx's are no OSError)
                return fail(parser.prog, OSError(f"cannot create {args.push_to_hub!r} on the Hub: {err}"))
        result = export_dataset(
            folds,
            args.out,
            max_shard_size=args.max_shard_size,
            repo_id=repo_id,
            void_label=args.void_label,
        )
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PanNukeDataError, ValueError) as err:
        return fail(parser.prog, err)

    print(f"PanNuke exported to {result.out_dir}\n")
    print("| split | patches | shards |\n|---|--:|--:|")
    for split, rows in result.num_rows.items():
        print(f"| {split} | {rows} | {len(result.shards[split])} |")
    if repo_id is not None:
        try:
            commit = push_export(result.out_dir, repo_id, private=args.private)
        except Exception as err:  # noqa: BLE001 - HTTP, auth and network errors (httpx's are no OSError)
            return fail(parser.prog, OSError(f"upload to {repo_id!r} failed: {err}"))
        print(f"\nPushed to {commit.repo_url} (commit {commit.oid[:8]}); load it with")
        print(f'    datasets.load_dataset("{repo_id}")')
    else:
        print(f'\nLoad it with datasets.load_dataset("{result.out_dir}")')
    return 0
