"""``pannuke-hf predict``: label maps, colour overlays and class pixel counts for image files.

Example::

    pannuke-hf predict --model runs/unet_fcn INPUT_DIR other.tif --out predictions/

For every readable image ``NAME`` it writes ``NAME_labels.png`` (uint8 label values 0-5) and
``NAME_overlay.png`` (the package palette blended over the image), and one ``class_counts.csv``
for all images. Folders are searched recursively for PNG, JPEG and TIFF files; their sub-folders
are mirrored under ``--out``. An unreadable file prints one error line naming it, the other files
are still processed, and the exit code is 1 at the end.
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

#: File extensions collected from folders (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pannuke-hf predict``."""
    p = argparse.ArgumentParser(
        prog="pannuke-hf predict",
        description="Predict PanNuke label maps, overlays and class pixel counts for images of any size.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files (PNG/JPEG/TIFF) or folders (recursive)"
    )
    p.add_argument(
        "--model", required=True, help="checkpoint folder (save_pretrained: model + processor) or Hub id"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
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
        help="image -> model pixel factor (default: processor size / 256, i.e. the training magnification)",
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


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (first frame of multi-page TIFFs).

    Raises:
        ValueError: the file cannot be decoded or holds an unsupported image (message names it).
    """
    from ..visualization import to_rgb_uint8

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb_uint8(im, name=str(path))
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"cannot read image {path}: {err}") from err


def load_model(name: str, device: str | None) -> tuple[Any, Any]:
    """Load a segmentation model and its image processor with the Auto classes.

    Importing ``pannuke_hf`` registered the UNet-FCN classes, so local checkpoints load without
    ``trust_remote_code``. When the checkpoint has no processor file, the package's default
    processor is used (with a warning).
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import pannuke_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(name)
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        from ..models.unet_fcn import UNetFCNImageProcessor

        print(
            f"warning: no image processor in {name} ({err}); using UNetFCNImageProcessor()", file=sys.stderr
        )
        processor = UNetFCNImageProcessor()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    return model, processor


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf predict``; returns 0 when every input was processed, 1 otherwise."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.alpha <= 1.0:
        print("error: --alpha must be in [0, 1]", file=sys.stderr)
        return 2
    from ..constants import PATCH_SIZE

    tile = PATCH_SIZE if args.tile_size is None else args.tile_size
    if tile < 1 or (args.overlap is not None and not 0 <= args.overlap < tile):
        print(f"error: need --tile-size >= 1 and 0 <= --overlap < tile size ({tile})", file=sys.stderr)
        return 2

    from tqdm.auto import tqdm

    from ..constants import CLASS_NAMES, NUM_LABELS
    from ..inference import predict_keyed
    from ..visualization import overlay

    files, missing = collect_inputs(args.inputs)
    failures = 0
    for raw, reason in missing:
        print(f"error: {raw}: {reason}", file=sys.stderr)
        failures += 1
    if not files:
        print("error: no images to process", file=sys.stderr)
        return 1

    try:
        model, processor = load_model(args.model, args.device)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return 2
    num_labels = int(getattr(model.config, "num_labels", NUM_LABELS))
    id2label = getattr(model.config, "id2label", None) or {}
    class_names = [
        str(id2label.get(i, CLASS_NAMES[i] if i < NUM_LABELS else f"label_{i}")) for i in range(num_labels)
    ]

    args.out.mkdir(parents=True, exist_ok=True)
    images: dict[str, np.ndarray] = {}  # images in flight, kept for their overlay
    progress = tqdm(total=len(files), desc="predict", unit="image", disable=args.no_progress, file=sys.stderr)

    def readable() -> Iterator[tuple[tuple[Path, str], np.ndarray]]:
        nonlocal failures
        for path, name in files:
            try:
                rgb = read_image(path)
            except ValueError as err:
                progress.write(f"error: {err}", file=sys.stderr)
                failures += 1
                progress.update(1)
                continue
            images[name] = rgb
            yield (path, name), rgb

    rows: list[list[Any]] = []
    results = predict_keyed(
        model,
        processor,
        readable(),
        tile_size=args.tile_size,
        overlap=args.overlap,
        batch_size=args.batch_size,
        scale=args.scale,
    )
    try:
        for (path, name), labels in results:
            rgb = images.pop(name)
            target = args.out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels).save(f"{target}_labels.png")
            Image.fromarray(overlay(rgb, labels, alpha=args.alpha)).save(f"{target}_overlay.png")
            counts = np.bincount(labels.ravel(), minlength=num_labels)
            rows.append([str(path), name, labels.shape[0], labels.shape[1], *counts.tolist()])
            progress.update(1)
    finally:
        progress.close()

    with open(args.out / "class_counts.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "name", "height", "width", *class_names])
        writer.writerows(rows)
    print(f"{len(rows)} image(s) written to {args.out}" + (f"; {failures} failed" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
