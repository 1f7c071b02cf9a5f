"""``pannuke-hf score``: PanNuke's official nucleus-level scores of release-format predictions.

Examples::

    pannuke-hf score --true raw/ --fold 3 --pred fold3_pred.npy --out scores/
    pannuke-hf score --true "raw/Fold 3" --pred pred.npy
    pannuke-hf score --true raw/fold_3.zip --pred pred.npy --num-proc 4
    pannuke-hf score --true masks.npy --tissues types.npy --pred pred.npy --radius 6

``--pred`` is an (N, H, W, 6) or (N, H, W, 5) ``.npy`` array of instance ids per class channel,
image i scored against patch i of the fold (HoVer-Net's, CellViT's and the official script's
format). Both arrays are read memory-mapped, a few patches at a time, so memory stays flat
whatever the fold size. Prints the overall, per-class and per-tissue tables and writes
``scores.json``, ``scores.md`` and CSV files into ``--out``.

Exit status (docs/cli.md): 0 on success, 1 when the work failed (a missing ``--true`` / ``--pred`` /
``--tissues`` file or folder, unreadable arrays, shape mismatches, NaN / negative / fractional ids,
tissue names PanNuke does not have: the file and patch named), 2 on a usage error (bad arguments,
a folder with several folds and no ``--fold``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Patches read per memory map: pages of a map stay resident until it is closed, so the arrays
#: are re-mapped every block to keep memory flat.
BLOCK: int = 16


class ScoreUsageError(Exception):
    """A usage problem (exit status 2)."""


class ScoreDataError(Exception):
    """Bad or missing data (exit status 1)."""


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``pannuke-hf score``."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf score",
        description=(
            "Score nucleus instance predictions in the PanNuke release format against a raw fold with "
            "the official protocol: PQ per class, mPQ and bPQ (tissue- and image-averaged), DQ, SQ, and "
            "HoVer-Net's detection / classification F1. Prints the tables, writes JSON + CSV."
        ),
    )
    parser.add_argument(
        "--true",
        required=True,
        metavar="PATH",
        help="ground truth: a raw data folder (with --fold when it holds several folds), a 'Fold k' folder, "
        "a fold_k.zip, or a masks.npy file",
    )
    parser.add_argument(
        "--pred",
        required=True,
        metavar="PRED.npy",
        help="predictions, (N, H, W, 6) or (N, H, W, 5) instance ids",
    )
    parser.add_argument(
        "--tissues",
        metavar="TYPES.npy",
        help="tissue of each patch (default: the fold's types.npy); without tissues, scores are image-averaged",
    )
    parser.add_argument("--fold", type=int, choices=(1, 2, 3), help="which fold of --true to score against")
    parser.add_argument(
        "--out", default="scores", help="output folder for scores.json/.md and CSVs (default: scores)"
    )
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--radius",
        type=float,
        default=12.0,
        help="F1 centroid pairing radius in pixels: 12 at 40x (default), 6 at 20x",
    )
    parser.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where a zip's masks are extracted (default: a temporary folder, removed)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


# --------------------------------------------------------------------------------------------
# Locating the ground truth
# --------------------------------------------------------------------------------------------


def _fold_in_folder(folder: Path, fold: int) -> tuple[Path, Path] | None:
    """``(masks, types)`` of ``fold`` when ``folder`` is the ``Fold k`` folder or holds it."""
    from ..constants import fold_dir_name, raw_relpaths

    rel = raw_relpaths(fold)
    for root in (folder.parent if folder.name == fold_dir_name(fold) else None, folder):
        if root is None:
            continue
        masks, types = root / rel["masks"], root / rel["types"]
        if masks.is_file():
            return masks, types
    return None


def _extract_zip(zip_path: Path, fold: int | None, cache_dir: Path) -> tuple[Path, Path | None]:
    """Extract a fold zip's masks and types (not its images) into ``cache_dir``."""
    from ..constants import FOLDS
    from ..data.raw import _zip_members

    if fold is None:
        match = re.fullmatch(r"fold_?(\d)\.zip", zip_path.name, flags=re.IGNORECASE)
        if not match or int(match.group(1)) not in FOLDS:
            raise ScoreUsageError(f"cannot tell the fold of {str(zip_path)!r} from its name: pass --fold")
        fold = int(match.group(1))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            members = _zip_members(zf, zip_path, fold)
            out = {}
            for key in ("masks", "types"):
                rel = next(r for r in members if r.endswith(f"/{key}.npy"))
                dest = cache_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(members[rel]) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=16 << 20)
                out[key] = dest
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ScoreDataError(f"cannot read {str(zip_path)!r}: {error}") from error
    except Exception as error:  # PanNukeDataError: a member is missing
        if type(error).__name__ == "PanNukeDataError":
            raise ScoreDataError(str(error)) from error
        raise
    return out["masks"], out["types"]


def locate_truth(true: str | os.PathLike, fold: int | None, cache_dir: Path) -> tuple[Path, Path | None]:
    """The ground truth's ``masks.npy`` and (if found) ``types.npy``.

    Args:
        true: a raw data folder, a ``Fold k`` folder, a ``fold_k.zip`` or a ``masks.npy``.
        fold: the fold to use (needed when the folder holds several).
        cache_dir: where zip members are extracted.

    Raises:
        ScoreUsageError: the path does not exist, or the fold is ambiguous / not found.
        ScoreDataError: an unreadable zip.
    """
    from ..constants import FOLD_ZIP_NAMES, FOLDS

    path = Path(true).expanduser()
    if not path.exists():
        raise ScoreDataError(f"--true {true}: no such file or folder")
    if path.is_file():
        if path.suffix == ".zip":
            return _extract_zip(path, fold, cache_dir)
        if path.suffix == ".npy":
            types = path.parent.parent.parent / "images" / path.parent.name / "types.npy"
            return path, types if types.is_file() else None
        raise ScoreUsageError(f"--true {str(path)!r}: expected a folder, a .zip or a .npy file")
    if (path / "masks.npy").is_file():
        return path / "masks.npy", (path / "types.npy") if (path / "types.npy").is_file() else None
    folds = [fold] if fold else list(FOLDS)
    found: dict[int, Any] = {}
    for k in folds:
        hit = _fold_in_folder(path, k)
        if hit is None:
            for sub in sorted(p for p in path.iterdir() if p.is_dir()):
                hit = _fold_in_folder(sub, k)
                if hit:
                    break
        if hit is None and (path / FOLD_ZIP_NAMES[k]).is_file():
            hit = path / FOLD_ZIP_NAMES[k]
        if hit is not None:
            found[k] = hit
    if not found:
        which = f"fold {fold}" if fold else "no fold"
        raise ScoreDataError(
            f"--true {str(path)!r}: {which} found (expected 'Fold k' folders or fold_k.zip files)"
        )
    if len(found) > 1:
        raise ScoreUsageError(f"--true {str(path)!r} holds folds {sorted(found)}: pass --fold to choose one")
    k, hit = next(iter(found.items()))
    if isinstance(hit, Path):
        return _extract_zip(hit, k, cache_dir)
    masks, types = hit
    return masks, types if types.is_file() else None


# --------------------------------------------------------------------------------------------
# Reading arrays
# --------------------------------------------------------------------------------------------


def _open(path: Path) -> np.ndarray:
    try:
        return np.lib.format.open_memmap(path, mode="r")
    except Exception as error:
        raise ScoreDataError(f"{str(path)!r} is not a readable .npy array: {error}") from error


def _tissue_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def normalise_tissue(name: str) -> str:
    """The official spelling of a tissue name (``"Bile Duct"`` -> ``"Bile-duct"``); unknown names unchanged."""
    from ..constants import TISSUES

    official = {_tissue_key(t): t for t in TISSUES}
    return official.get(_tissue_key(name), name)


def read_tissues(path: Path, count: int) -> list[str]:
    """Tissue names of ``count`` patches from a ``types.npy`` (names normalised to the official spelling)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ScoreDataError(f"{str(path)!r} is not a readable .npy array of strings: {error}") from error
    if arr.dtype.kind not in "US" or arr.ndim != 1:
        raise ScoreDataError(
            f"{str(path)!r}: tissues must be a 1-D array of strings, got {arr.dtype} {arr.shape}"
        )
    if len(arr) != count:
        raise ScoreDataError(f"{str(path)!r}: {len(arr)} tissues for {count} patches")
    from ..constants import TISSUES

    names = [normalise_tissue(t.decode() if isinstance(t, bytes) else str(t)) for t in arr.tolist()]
    for index, name in enumerate(names):
        if name not in TISSUES:  # a misspelt tissue would be averaged as a tissue of its own
            raise ScoreDataError(
                f"{str(path)!r}, patch {index}: unknown tissue {name!r}; PanNuke's tissues are {', '.join(TISSUES)}"
            )
    return names


def check_arrays(masks_path: Path, pred_path: Path) -> int:
    """Validate both arrays' headers; returns the number of patches."""
    masks, pred = _open(masks_path), _open(pred_path)
    for path, arr in ((masks_path, masks), (pred_path, pred)):
        if arr.ndim != 4 or arr.shape[3] not in (5, 6):
            raise ScoreDataError(
                f"{str(path)!r}: expected shape (N, H, W, 6) or (N, H, W, 5), got {arr.shape}"
            )
        if arr.dtype.kind not in "iufb":
            raise ScoreDataError(f"{str(path)!r}: instance ids must be numbers, got dtype {arr.dtype}")
    if masks.shape[:3] != pred.shape[:3]:
        raise ScoreDataError(
            f"predictions {str(pred_path)!r} {pred.shape[:3]} and ground truth {str(masks_path)!r} "
            f"{masks.shape[:3]} differ in (N, H, W)"
        )
    return int(masks.shape[0])


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_range(
    masks_path: str, pred_path: str, start: int, stop: int, tissues: list[str] | None, radius: float | None
) -> Any:
    """Score patches ``start..stop-1``; returns a ``PanNukeInstanceMetrics`` (for merging)."""
    from ..metrics.pq import PanNukeInstanceMetrics

    metric = PanNukeInstanceMetrics(radius=radius)
    sources = (repr(str(masks_path)), repr(str(pred_path)))
    for block_start in range(start, stop, BLOCK):
        masks, pred = _open(Path(masks_path)), _open(Path(pred_path))
        for i in range(block_start, min(block_start + BLOCK, stop)):
            tissue = tissues[i] if tissues is not None else None
            metric.update_release(masks[i], pred[i], tissue, index=i, where=f"patch {i}", sources=sources)
        del masks, pred
    return metric


def _score_job(job: tuple[Any, ...]) -> tuple[int, Any]:
    return job[3] - job[2], score_range(*job)


def _chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def score(
    masks_path: Path,
    pred_path: Path,
    tissues: list[str] | None,
    radius: float | None = 12.0,
    num_proc: int = 1,
    count: int | None = None,
    progress: bool = True,
) -> Any:
    """Score the first ``count`` patches (all by default), with ``num_proc`` processes.

    Returns:
        The merged ``PanNukeInstanceMetrics``.
    """
    from tqdm.auto import tqdm

    from ..metrics.pq import PanNukeInstanceMetrics

    total = check_arrays(masks_path, pred_path)
    count = total if count is None else min(count, total)
    chunk = BLOCK * 2
    jobs = [(str(masks_path), str(pred_path), a, b, tissues, radius) for a, b in _chunks(count, chunk)]
    merged = PanNukeInstanceMetrics(radius=radius)
    with tqdm(total=count, unit="img", desc="scoring", disable=not progress) as bar:
        if num_proc <= 1 or len(jobs) <= 1:
            for job in jobs:
                done, metric = _score_job(job)
                merged.merge(metric)
                bar.update(done)
        else:
            import multiprocessing

            # fork where the platform has it: workers start at once and need no re-import of
            # the caller's main module (spawn would re-run an unguarded calling script).
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(num_proc) as pool:
                for done, metric in pool.imap_unordered(_score_job, jobs):
                    merged.merge(metric)
                    bar.update(done)
    return merged


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf score``; returns the exit status (0, 1 bad data, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_proc < 1:
        parser.error("--num-proc must be at least 1")
    if not args.radius > 0:
        parser.error("--radius must be positive")

    from ..metrics.pq import instance_results_tables, save_instance_results
    from ..nuclei import NucleiInputError
    from ._common import InputError, check_input_file, fail

    prog = "pannuke-hf score"
    tmp = None
    try:
        check_input_file(args.pred, "--pred", "file (an .npy array of instance ids)")
        check_input_file(args.tissues, "--tissues", "file (a types.npy array of tissue names)")
        pred_path = Path(args.pred).expanduser()
        cache = (
            Path(args.cache_dir) if args.cache_dir else Path(tmp := tempfile.mkdtemp(prefix="pannuke-score-"))
        )
        masks_path, types_path = locate_truth(args.true, args.fold, cache)
        count = check_arrays(masks_path, pred_path)
        tissues_path = Path(args.tissues) if args.tissues else types_path
        tissues = read_tissues(tissues_path, count) if tissues_path else None
        metric = score(
            masks_path, pred_path, tissues, args.radius, args.num_proc, args.max_images, not args.no_progress
        )
        results = metric.compute()
    except ScoreUsageError as error:
        return fail(prog, error, 2)
    except (ScoreDataError, NucleiInputError, InputError) as error:
        return fail(prog, error, 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    table = instance_results_tables(results)
    if tissues is None:
        table = "No tissues given: the tissue-averaged scores equal the image averages.\n\n" + table
    print(table)
    extra = {
        "truth": str(masks_path),
        "prediction": str(pred_path),
        "tissues": str(tissues_path) if tissues_path else None,
        "fold": args.fold,
        "radius": args.radius,
    }
    paths = save_instance_results(results, args.out, extra, image_table=metric.image_table())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":  # through the dispatcher: its error handling and exit codes
    from ..cli import main as cli_main

    sys.exit(cli_main(["score", *sys.argv[1:]]))
