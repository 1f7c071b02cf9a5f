"""``pannuke-hf predict``: label maps, colour overlays, class pixel counts and nuclei for image files.

Examples::

    pannuke-hf predict --model runs/unet_fcn INPUT_DIR other.tif --out predictions/
    pannuke-hf predict --model runs/unet_fcn slide_crop.tif --instances --out predictions/
    pannuke-hf predict --model runs/unet_fcn crop_20x.png --instances --mpp 0.5 --offset 40000 12000 --out p/
    pannuke-hf predict --model runs/unet_fcn --fold-dir "raw/Fold 3" --format pannuke --out fold3_pred.npy

For every readable image ``NAME`` it writes ``NAME_labels.png`` (uint8 label values 0-5) and
``NAME_overlay.png`` (the package palette blended over the image), and one ``class_counts.csv``
for all images. Folders are searched recursively for PNG, JPEG and TIFF files; their sub-folders
are mirrored under ``--out``. An unreadable file prints one error line naming it, the other files
are still processed, and the exit code is 1 at the end.

``--instances`` also writes, per image, the nuclei (see ``docs/instances.md``):
``NAME_instances.png`` (16-bit nucleus ids, 0 = none), ``NAME_nuclei.csv`` (one row per nucleus:
id, class, centroid, area, bounding box, score) and ``NAME_nuclei.geojson`` (QuPath detections),
plus one ``nuclei_counts.csv`` (nuclei per class per image). Large images are tiled and the
stitched maps post-processed once, so a nucleus on a tile border is one nucleus. ``--offset X Y``
adds a region's position in its slide to the CSV and GeoJSON coordinates; ``--mpp`` gives the
images' pixel size (the model's own, ``config.mpp``, by default) and the CSV's ``area_um2``.

Images are decoded only when predicting them fits in the memory available
(:func:`pannuke_hf.images.read_image`), also above Pillow's decompression-bomb limit; larger ones
fail with one line pointing to ``pannuke-hf slide``.

``--format pannuke`` writes the nuclei of all inputs (image files, all of one size, in the order
listed, or the patches of a raw fold's ``images.npy`` with ``--fold-dir``) into one
release-format array (N, H, W, 6) at ``--out`` (a ``.npy`` file), which ``pannuke-hf score`` and
the official evaluation read.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..models.loading import load_model  # light: imports torch / transformers only when called
from ._common import EXIT_FAILURE, EXIT_USAGE, InputError, UsageError, check_device, check_model_source, fail

#: How errors name the command (``pannuke-hf predict: error: ...``, as every command's).
PROG = "pannuke-hf predict"

#: File extensions collected from folders (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pannuke-hf predict``."""
    p = argparse.ArgumentParser(
        prog="pannuke-hf predict",
        description="Predict PanNuke label maps, overlays and class pixel counts (and nuclei) for images "
        "of any size that fits in memory, at the model's training scale.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files (PNG/JPEG/TIFF) or folders (recursive)"
    )
    p.add_argument(
        "--model", required=True, help="checkpoint folder (save_pretrained: model + processor) or Hub id"
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (with --format pannuke: the .npy file to write)",
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="also write nuclei per image: NAME_instances.png (16-bit), NAME_nuclei.csv, NAME_nuclei.geojson",
    )
    p.add_argument(
        "--format",
        choices=("files", "pannuke"),
        default="files",
        help="files (default): per-image files in --out; pannuke: one release-format (N, H, W, 6) "
        "array of all inputs' nuclei at --out, for `pannuke-hf score`",
    )
    p.add_argument(
        "--fold-dir",
        type=Path,
        default=None,
        help="predict the patches of a raw PanNuke fold (a folder holding images.npy, e.g. 'Fold 3', "
        "or the images.npy file) instead of image files; use with --format pannuke",
    )
    p.add_argument(
        "--min-size",
        type=int,
        default=None,
        help="nuclei with fewer pixels are dropped (default 10 at the model's pixel size, 0.25 µm: "
        "0.625 µm²; 3 at --mpp 0.5)",
    )
    p.add_argument(
        "--mpp",
        type=float,
        default=None,
        metavar="UM",
        help="the images' pixel size in µm (0.25 at 40x, 0.5 at 20x). The images are rescaled to the "
        "model's training pixel size (its config's mpp, default 0.25), windows cover the same tissue, "
        "--min-size follows, and the CSV's area_um2 uses it. Default: the model's pixel size",
    )
    p.add_argument(
        "--offset",
        type=int,
        nargs=2,
        default=None,
        metavar=("X", "Y"),
        help="position in pixels of the image's top-left corner in its slide (one image, with "
        "--instances): added to the nuclei's CSV and GeoJSON coordinates, so a region's nuclei "
        "land in place on the slide in QuPath",
    )
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (default 8)")
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="window side in image pixels (default 256, the PanNuke patch size the model was trained on)",
    )
    p.add_argument(
        "--overlap", type=int, default=None, help="pixels shared by neighbouring windows (default tile/3)"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="image -> model pixel factor (default: processor size / 256, i.e. the training "
        "magnification; --mpp sets it from pixel sizes)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the label colours in the overlay (default 0.5)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files and folders into ``(path, output name)`` pairs.

    A file keeps its stem as name; a file found in a folder keeps its path relative to that
    folder (without suffix), so sub-folders are mirrored. Names that would collide get ``_2``,
    ``_3``... appended.

    Returns:
        ``(found, missing)``: the images to process, and ``(input, reason)`` for inputs that do
        not exist or folders without images.
    """
    found: list[tuple[Path, str]] = []
    missing: list[tuple[str, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                missing.append((raw, f"no {'/'.join(IMAGE_EXTENSIONS)} files in this folder"))
            found += [(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.is_file():
            found.append((path, path.stem))
        else:
            missing.append((raw, "no such file or folder"))
    used: dict[str, int] = {}
    named: list[tuple[Path, str]] = []
    for path, name in found:
        key = name.lower()  # case-insensitive file systems
        if key in used:
            used[key] += 1
            name = f"{name}_{used[key]}"
        else:
            used[key] = 1
        named.append((path, name))
    return named, missing


def _check_instance_options(args: argparse.Namespace) -> str | None:
    """The usage error of the instance / release options, or None."""
    if args.min_size is not None and args.min_size < 0:
        return "--min-size must be >= 0"
    if args.mpp is not None and not args.mpp > 0:
        return f"--mpp is a pixel size in µm and must be > 0, got {args.mpp}"
    if args.mpp is not None and args.scale is not None:
        return "--mpp sets the scale from the pixel sizes: give --mpp or --scale, not both"
    if args.offset is not None and (args.format != "files" or not args.instances):
        return "--offset moves the nuclei's CSV and GeoJSON coordinates: use it with --instances (and --format files)"
    if args.fold_dir is not None and args.format != "pannuke":
        return "--fold-dir writes a release-format array: add --format pannuke"
    if args.fold_dir is not None and args.inputs:
        return "give image INPUTs or --fold-dir, not both"
    if args.fold_dir is None and not args.inputs:
        return "no INPUT given (image files, folders, or --fold-dir with --format pannuke)"
    if args.format == "pannuke" and args.out.suffix != ".npy":
        return f"--format pannuke writes one array: --out must be a .npy file, got {str(args.out)!r}"
    return None


def open_fold_images(fold_dir: Path) -> np.ndarray:
    """Memory-map the ``images.npy`` of a raw fold: the file itself, or the one file under the folder.

    Raises:
        ValueError: no or several ``images.npy`` under the folder, or an unreadable / misshaped array.
    """
    path = Path(fold_dir)
    if path.is_dir():
        found = sorted(path.rglob("images.npy"))
        if len(found) != 1:
            what = (
                "no images.npy"
                if not found
                else f"{len(found)} images.npy files ({', '.join(map(str, found))})"
            )
            raise ValueError(f"--fold-dir {str(path)!r}: expected one raw fold, found {what}")
        path = found[0]
    elif not path.is_file():
        raise ValueError(f"--fold-dir {str(path)!r}: no such folder or file")
    try:
        images = np.lib.format.open_memmap(path, mode="r")
    except Exception as err:  # bad magic, truncated file, ...
        raise ValueError(f"{str(path)!r} is not a readable .npy array: {err}") from err
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{str(path)!r}: expected images of shape (N, H, W, 3), got {images.shape}")
    return images


def write_nuclei_files(
    target: Path,
    instances: np.ndarray,
    segments: list[dict],
    id2label: dict,
    num_labels: int,
    offset: tuple[int, int] = (0, 0),
    microns_per_pixel: float | None = None,
) -> list[int]:
    """Write ``TARGET_instances.png``, ``TARGET_nuclei.csv`` and ``TARGET_nuclei.geojson``.

    ``offset`` (x, y) is added to the CSV's and GeoJSON's coordinates (not to the PNG, which is
    the image's own grid); ``microns_per_pixel`` (default PanNuke's) gives the CSV's ``area_um2``.
    Returns the number of nuclei of each label 0..num_labels-1.
    """
    from ..constants import MICRONS_PER_PIXEL
    from ..exports import nuclei_geojson, nuclei_records, write_geojson, write_instance_png, write_nuclei_csv

    mpp = MICRONS_PER_PIXEL if microns_per_pixel is None else microns_per_pixel
    write_instance_png(instances, f"{target}_instances.png")
    records = nuclei_records(instances, segments, id2label, offset=offset, microns_per_pixel=mpp)
    write_nuclei_csv(records, f"{target}_nuclei.csv")
    write_geojson(nuclei_geojson(instances, segments, id2label, offset=offset), f"{target}_nuclei.geojson")
    return np.bincount([s["label_id"] for s in segments], minlength=num_labels).tolist()[:num_labels]


def predict_release(
    args: argparse.Namespace,
    model: Any,
    processor: Any,
    files: list[tuple[Path, str]],
    fold_images: np.ndarray | None,
) -> int:
    """``--format pannuke``: the nuclei of every input as one release-format array at ``args.out``."""
    from tqdm.auto import tqdm

    from ..data.raw import convert_image
    from ..exports import write_release_array
    from ..images import read_image
    from ..inference import predict_instances_keyed

    count = len(fold_images) if fold_images is not None else len(files)
    if fold_images is not None:
        source = Path(fold_images.filename)
        items = ((i, convert_image(fold_images[i], source, i)) for i in range(count))
    else:
        items = ((i, read_image(path)) for i, (path, _) in enumerate(files))
    progress = tqdm(total=count, desc="predict", unit="image", disable=args.no_progress, file=sys.stderr)

    def predictions():
        found = predict_instances_keyed(
            model,
            processor,
            items,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_size=args.batch_size,
            scale=args.scale,
            min_size=args.min_size,
        )
        for _, nuclei in found:
            progress.update(1)
            yield nuclei.instances, nuclei.segments_info

    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        shape = write_release_array(args.out, predictions(), num_images=count)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        args.out.unlink(missing_ok=True)
        return 1
    finally:
        progress.close()
    print(f"release-format predictions {shape} written to {args.out}")
    return 0


def resolve_pixel_size(args: argparse.Namespace, model: Any, processor: Any) -> float:
    """Apply ``--mpp``: set ``args.scale``, ``args.tile_size`` and ``args.min_size``; return the images' µm / pixel.

    The model was trained at ``config.mpp`` µm / pixel (default PanNuke's 0.25, 40x). Images at
    ``--mpp`` are rescaled by ``mpp / model mpp`` on top of the processor's own factor, windows
    shrink by the same factor in image pixels (so they cover the tissue of a training patch), and
    the smallest nucleus kept stays the same area in µm² (10 pixels at 0.25 µm: 3 at 0.5 µm).
    Without ``--mpp`` the images are taken to be at the model's pixel size.
    """
    import math

    from ..constants import MICRONS_PER_PIXEL
    from ..inference import default_scale, processor_tile_size

    model_mpp = float(getattr(model.config, "mpp", MICRONS_PER_PIXEL) or MICRONS_PER_PIXEL)
    mpp = model_mpp if args.mpp is None else float(args.mpp)
    factor = mpp / model_mpp
    if args.mpp is not None:
        args.scale = default_scale(processor)[0] * factor
        if args.tile_size is None:
            args.tile_size = max(1, round(processor_tile_size(processor) / factor))
    if args.min_size is None:
        args.min_size = max(1, math.ceil(10 / factor**2 - 1e-9))
    return mpp


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf predict``; returns 0 when every input was processed, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print(f"{PROG}: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.alpha <= 1.0:
        print(f"{PROG}: error: --alpha must be in [0, 1]", file=sys.stderr)
        return 2
    from ..constants import PATCH_SIZE

    tile = PATCH_SIZE if args.tile_size is None else args.tile_size
    if tile < 1 or (args.overlap is not None and not 0 <= args.overlap < tile):
        print(
            f"{PROG}: error: need --tile-size >= 1 and 0 <= --overlap < tile size ({tile})", file=sys.stderr
        )
        return 2
    usage = _check_instance_options(args)
    if usage:
        print(f"{PROG}: error: {usage}", file=sys.stderr)
        return 2

    try:  # the device and the model before any work (pannuke_hf.commands._common)
        check_device(args.device)
        check_model_source(args.model)
    except UsageError as err:
        return fail("pannuke-hf predict", err, EXIT_USAGE)
    except InputError as err:
        return fail("pannuke-hf predict", err)

    from tqdm.auto import tqdm

    from ..constants import CLASS_NAMES, NUM_LABELS
    from ..images import read_image
    from ..inference import predict_instances_keyed, predict_keyed
    from ..visualization import overlay

    fold_images = None
    if args.fold_dir is not None:
        try:
            fold_images = open_fold_images(args.fold_dir)
        except ValueError as err:  # a missing or unreadable input folder: the work failed
            return fail("pannuke-hf predict", err)
        files, missing = [], []
    else:
        files, missing = collect_inputs(args.inputs)
    failures = 0
    for raw, reason in missing:
        print(f"{PROG}: error: {raw}: {reason}", file=sys.stderr)
        failures += 1
    if not files and fold_images is None:
        print(f"{PROG}: error: no images to process", file=sys.stderr)
        return 1
    if args.offset is not None and len(files) + len(missing) != 1:
        print(
            f"{PROG}: error: --offset places one region in its slide: give one image, got {len(files) + len(missing)}",
            file=sys.stderr,
        )
        return 2
    if args.format == "pannuke" and failures:
        print(
            f"{PROG}: error: --format pannuke needs every input (the array is indexed by input)",
            file=sys.stderr,
        )
        return 1

    try:
        model, processor = load_model(args.model, args.device)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"{PROG}: error: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    num_labels = int(getattr(model.config, "num_labels", NUM_LABELS))
    microns_per_pixel = resolve_pixel_size(args, model, processor)
    if args.overlap is not None and args.tile_size is not None and not args.overlap < args.tile_size:
        print(
            f"{PROG}: error: --overlap must be < the tile size ({args.tile_size} at --mpp {args.mpp})",
            file=sys.stderr,
        )
        return 2
    # stitched maps: class logits + coverage count (+ nucleus logits and hv maps with the hv head)
    channels = num_labels + 1 + (4 if getattr(model.config, "instance_head", None) == "hv" else 0)
    id2label = getattr(model.config, "id2label", None) or {}
    class_names = [
        str(id2label.get(i, CLASS_NAMES[i] if i < NUM_LABELS else f"label_{i}")) for i in range(num_labels)
    ]
    if args.format == "pannuke":
        return predict_release(args, model, processor, files, fold_images)

    args.out.mkdir(parents=True, exist_ok=True)
    images: dict[str, np.ndarray] = {}  # images in flight, kept for their overlay
    progress = tqdm(total=len(files), desc="predict", unit="image", disable=args.no_progress, file=sys.stderr)

    def readable() -> Iterator[tuple[tuple[Path, str], np.ndarray]]:
        nonlocal failures
        for path, name in files:
            try:
                rgb = read_image(path, channels=channels)
            except ValueError as err:
                progress.write(f"{PROG}: error: {err}", file=sys.stderr)
                failures += 1
                progress.update(1)
                continue
            images[name] = rgb
            yield (path, name), rgb

    rows: list[list[Any]] = []
    nucleus_rows: list[list[Any]] = []
    tiling = {
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "batch_size": args.batch_size,
        "scale": args.scale,
    }
    if args.instances:
        found = predict_instances_keyed(model, processor, readable(), min_size=args.min_size, **tiling)
        results = ((key, nuclei.labels, nuclei) for key, nuclei in found)
    else:
        results = (
            (key, labels, None) for key, labels in predict_keyed(model, processor, readable(), **tiling)
        )
    try:
        for (path, name), labels, nuclei in results:
            rgb = images.pop(name)
            target = args.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(f"{target}_labels.png")
            Image.fromarray(overlay(rgb, labels, alpha=args.alpha)).save(f"{target}_overlay.png")
            counts = np.bincount(labels.ravel(), minlength=num_labels)
            rows.append([str(path), name, labels.shape[0], labels.shape[1], *counts.tolist()])
            if nuclei is not None:
                per_class = write_nuclei_files(
                    target,
                    nuclei.instances,
                    nuclei.segments_info,
                    dict(enumerate(class_names)),
                    num_labels,
                    offset=tuple(args.offset or (0, 0)),
                    microns_per_pixel=microns_per_pixel,
                )
                nucleus_rows.append([str(path), name, len(nuclei.segments_info), *per_class[1:]])
            progress.update(1)
    finally:
        progress.close()

    if args.instances:
        with open(args.out / "nuclei_counts.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "name", "nuclei", *class_names[1:]])
            writer.writerows(nucleus_rows)

    with open(args.out / "class_counts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "name", "height", "width", *class_names])
        writer.writerows(rows)
    print(f"{len(rows)} image(s) written to {args.out}" + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
