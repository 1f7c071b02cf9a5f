"""What the demo page does, as plain functions (no Gradio): read uploads, predict, draw, tabulate, export.

The page (:mod:`pannuke_hf.demo.app`) only wires these functions to widgets, so every step can be
tested without a browser. One uploaded image goes through:

1. :func:`read_upload` - checks the file (exists, not empty, PNG/JPEG/TIFF, size within
   :data:`MAX_SIDE` / :data:`MAX_PIXELS` read from the header *before* decoding, at least
   :data:`MIN_SIDE` pixels a side) and decodes it to ``(H, W, 3)`` uint8 RGB. Every refusal is a
   :class:`DemoInputError` whose message names the file and says what is accepted.
2. :func:`analyse_image` - one tiled pass of :func:`pannuke_hf.inference.predict_instances_keyed`
   gives the label map (arg-max of the stitched logits), the nucleus instance map and its
   ``segments_info``: exactly what ``pannuke-hf predict --instances`` writes for the same image
   and settings (without the instance path: the label map of ``predict_keyed``). Images larger
   than one tile are tiled; a callback reports progress.
3. :func:`render_overlay` - the class colours of ``constants.PALETTE`` blended over the image at
   the chosen opacity, with every nucleus outlined in its class colour.
4. :func:`summary_rows` - per image and nucleus class: nuclei, their area (pixels and square
   microns at the image's magnification) and the label-map pixels of the class.
5. :func:`write_downloads` - the label map PNG (as ``pannuke-hf predict`` writes it), the overlay
   and, with instances, the 16-bit instance map, the per-nucleus CSV and the QuPath GeoJSON, all
   written by :mod:`pannuke_hf.exports`.

Magnification: the model was trained on 40x patches (``constants.MICRONS_PER_PIXEL`` = 0.25 um per
pixel). A 20x image (0.5 um per pixel) is enlarged by 2 on its way to the model: the tiles cover
``PATCH_SIZE / 2`` image pixels and the image -> model factor doubles, so the model sees nuclei at
the size it learned. At 40x the defaults of ``pannuke-hf predict`` are used unchanged.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import CLASS_FULL_NAMES, CLASS_NAMES, MICRONS_PER_PIXEL, NUM_LABELS, PALETTE, PATCH_SIZE

__all__ = [
    "ACCEPTED_FORMATS",
    "DEMO_CHECKPOINT_DIR",
    "EXAMPLE_PATCHES",
    "MAGNIFICATIONS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MIN_SIDE",
    "SUMMARY_HEADERS",
    "DemoInputError",
    "DemoModelError",
    "ImageResult",
    "BatchOutput",
    "analyse_image",
    "example_paths",
    "find_demo_checkpoint",
    "instances_available",
    "is_checkpoint",
    "legend_html",
    "load_demo_model",
    "make_example_patches",
    "model_card_text",
    "process_uploads",
    "read_upload",
    "render_overlay",
    "summary_rows",
    "tiling_for",
    "training_data_for",
    "write_downloads",
    "write_summary_csv",
]

#: Longest side accepted, in pixels (a 16384-pixel strip is fine, a 20,000-pixel side is not).
MAX_SIDE: int = 16384
#: Most pixels accepted in one image (4096 x 4096): larger images belong to ``pannuke-hf predict``.
MAX_PIXELS: int = 4096 * 4096
#: Shortest side accepted: below this an image cannot hold a nucleus at 40x or 20x.
MIN_SIDE: int = 16
#: PIL format names accepted, with the names users know them by.
ACCEPTED_FORMATS: dict[str, str] = {"PNG": "PNG", "JPEG": "JPEG", "TIFF": "TIFF", "MPO": "JPEG"}
#: Smallest nucleus kept at 40x, in pixels (the instance post-processing's default).
MIN_NUCLEUS_PIXELS_40X: int = 10
#: Magnifications offered on the page -> objective power.
MAGNIFICATIONS: dict[str, int] = {"40x (0.25 µm/px)": 40, "20x (0.5 µm/px)": 20}
#: Folder ``python train.py`` (configs/demo.yaml) writes the built-in demo checkpoint to.
DEMO_CHECKPOINT_DIR: str = "demo_output"
#: The bundled example patches: generated (``pannuke_hf.data.synthetic``) with this seed, not the
#: seed of the demo training data, as (fold, index) pairs.
EXAMPLE_SEED: int = 2026
EXAMPLE_PATCHES: tuple[tuple[int, int], ...] = ((1, 0), (1, 5), (1, 6))
EXAMPLES_DIR: Path = Path(__file__).parent / "examples"

#: Columns of :func:`summary_rows` (the table on the page and ``summary.csv``).
SUMMARY_HEADERS: tuple[str, ...] = (
    "image",
    "class",
    "nuclei",
    "area (px)",
    "mean area (µm²)",
    "label-map pixels",
)

ProgressFn = Callable[[float, str], None]


class DemoInputError(ValueError):
    """An upload the demo refuses; the message is meant for the page, as it is."""


class DemoModelError(RuntimeError):
    """No model could be loaded; the message says how to get one."""


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def is_checkpoint(folder: Path) -> bool:
    """``folder`` holds a saved model: ``config.json`` and weights."""
    weights = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    return (folder / "config.json").is_file() and any((folder / w).is_file() for w in weights)


def checkpoint_search_paths() -> list[Path]:
    """Folders searched for ``demo_output/``: the current folder, then the source checkout's root."""
    return [Path.cwd(), Path(__file__).resolve().parents[2]]


def find_demo_checkpoint(search: Sequence[Path] | None = None) -> Path | None:
    """The built-in demo checkpoint written by ``python train.py``, or None.

    Looks for ``demo_output/`` (config + weights) in the current folder, then beside the
    package's source tree (where ``train.py`` lives in a checkout).
    """
    if search is None:
        search = checkpoint_search_paths()
    for base in search:
        folder = Path(base) / DEMO_CHECKPOINT_DIR
        if is_checkpoint(folder):
            return folder
    return None


def load_demo_model(model: str | None = None, device: str | None = None) -> tuple[Any, Any, str]:
    """Load the model and image processor the page uses.

    Args:
        model: a checkpoint folder or Hub id; None: the built-in demo checkpoint.
        device: ``cpu``, ``cuda``... (default: cuda when available).

    Returns:
        ``(model, processor, name)``, the model in eval mode on its device.

    Raises:
        DemoModelError: no model given and no demo checkpoint, or the model cannot be loaded.
    """
    if model is None:
        found = find_demo_checkpoint()
        if found is None:
            raise DemoModelError(
                f"no model given and no demo checkpoint in ./{DEMO_CHECKPOINT_DIR}: train the built-in demo "
                "model first with `python train.py` (a few minutes on a CPU, no download needed), "
                "or pass --model PATH_OR_HUB_ID"
            )
        model = str(found)
    from ..models.loading import load_model

    try:
        net, processor = load_model(model, device)
    except (OSError, ValueError, RuntimeError) as err:
        raise DemoModelError(f"cannot load the model {model!r}: {err}") from err
    return net, processor, model


def model_card_text(model: str | Path) -> str | None:
    """The model card (``README.md``) of a checkpoint folder or Hub id; None when there is none.

    A folder's own ``README.md`` is read; for a Hub id the card is fetched (or taken from the
    local Hub cache when offline). No card, or a Hub that cannot be reached, gives None.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        card = folder / "README.md"
    else:
        try:
            from huggingface_hub import hf_hub_download

            card = Path(hf_hub_download(str(model), "README.md"))
        except Exception:  # no card, no network, not a Hub id: nothing is known
            return None
    try:
        return card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def training_data_for(model: str | Path) -> Any:
    """What a checkpoint was trained on, as its model card says (:func:`model_card_text`), else its config.

    Returns:
        a :class:`pannuke_hf.training.model_card.TrainingData`, or None when the card is missing
        or names no data: the page then says nothing about the data.
    """
    from ..training.model_card import TrainingData, training_data_from_card

    text = model_card_text(model)
    said = None if text is None else training_data_from_card(text)
    if said is not None:
        return said
    # No card (or one that names no data): the config's record of a ``train.py`` run still tells
    # generated data apart; it cannot tell PanNuke from other data in the raw format, so only
    # "generated" is said from it.
    from ..data.splits import read_training_record

    record = read_training_record(model)
    if record is not None and record.get("synthetic_data"):
        return TrainingData(generated=True)
    return None


# ---------------------------------------------------------------------------------------------
# Reading uploads
# ---------------------------------------------------------------------------------------------


def _display_name(path: Path) -> str:
    """The name the user gave the file (Gradio keeps it as the last path component)."""
    return path.name


def read_upload(
    path: str | Path,
    max_side: int = MAX_SIDE,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Check and decode one uploaded image file.

    The size is read from the file header before any pixel is decoded, so a huge image is
    refused without using its memory.

    Args:
        path: the uploaded file.
        max_side, max_pixels, min_side: limits (defaults: :data:`MAX_SIDE`, :data:`MAX_PIXELS`,
            :data:`MIN_SIDE`).

    Returns:
        ``(H, W, 3)`` uint8 RGB (first frame of a multi-page TIFF; grey, RGBA and 16-bit images
        converted as :func:`pannuke_hf.visualization.to_rgb_uint8` does).

    Raises:
        DemoInputError: with a message naming the file and what is accepted.
    """
    from PIL import Image, UnidentifiedImageError

    from ..visualization import to_rgb_uint8

    path = Path(path)
    name = _display_name(path)
    accepted = "PNG, JPEG or TIFF"
    if not path.is_file():
        raise DemoInputError(f"{name}: the file is missing (upload it again)")
    if path.stat().st_size == 0:
        raise DemoInputError(f"{name}: the file is empty (0 bytes); upload a {accepted} image")
    limits = (
        f"the demo accepts at most {max_side:,} pixels a side and {max_pixels:,} pixels in all "
        f"({math.isqrt(max_pixels):,} x {math.isqrt(max_pixels):,}); "
        "use `pannuke-hf predict` for larger images"
    )
    try:
        with Image.open(path) as im:  # reads the header only
            fmt = im.format
            width, height = im.size
            if fmt not in ACCEPTED_FORMATS:
                raise DemoInputError(f"{name}: {fmt} images are not supported; upload a {accepted} image")
            if width > max_side or height > max_side or width * height > max_pixels:
                raise DemoInputError(f"{name}: the image is {width:,} x {height:,} pixels; {limits}")
            if min(width, height) < min_side:
                raise DemoInputError(
                    f"{name}: the image is {width} x {height} pixels, too small to hold a nucleus; "
                    f"the demo needs at least {min_side} x {min_side} pixels"
                )
            im.load()
            return to_rgb_uint8(im, name=name)
    except DemoInputError:
        raise
    except Image.DecompressionBombError as err:
        # PIL refuses to even open images far beyond its own limit: report ours.
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too large"
        raise DemoInputError(f"{name}: the image has {size}; {limits}") from None
    except UnidentifiedImageError:
        raise DemoInputError(f"{name}: this is not an image file; upload a {accepted} image") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DemoInputError(f"{name}: the image cannot be decoded ({err}); is the file complete?") from None


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


@dataclass
class ImageResult:
    """Everything the page shows and offers for one image.

    Attributes:
        name: file name as uploaded.
        image: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` uint8 label map (0 background, 1-5 nucleus classes).
        magnification: objective power the image was read at (40 or 20).
        instances: ``(H, W)`` int32 nucleus ids (0 = none), or None without the instance path.
        segments_info: one ``{"id", "label_id", "score", ...}`` per nucleus (instance path only).
        id2label: class names by label id for the exported files (the model's ``id2label``).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    magnification: int = 40
    instances: np.ndarray | None = None
    segments_info: list[dict[str, Any]] = field(default_factory=list)
    id2label: dict[int, str] = field(default_factory=lambda: dict(enumerate(CLASS_NAMES)))

    @property
    def microns_per_pixel(self) -> float:
        """Pixel size at this magnification (0.25 um at 40x)."""
        return MICRONS_PER_PIXEL * 40.0 / self.magnification


def instances_available() -> bool:
    """True when the package has nucleus instances and their exports (the outline/CSV/GeoJSON path)."""
    try:
        from .. import exports  # noqa: F401
        from ..inference import predict_instances_keyed  # noqa: F401
    except ImportError:
        return False
    return True


def tiling_for(processor: Any, magnification: int) -> tuple[int | None, float | None]:
    """``(tile_size, scale)`` for :mod:`pannuke_hf.inference` at a magnification.

    40x: ``(None, None)``, the defaults of ``pannuke-hf predict``. 20x: tiles of half a patch and
    twice the default image -> model factor (see the module docstring).
    """
    if magnification not in (20, 40):
        raise ValueError(f"magnification must be 40 or 20, got {magnification}")
    if magnification == 40:
        return None, None
    from ..inference import default_scale

    factor = 40 / magnification
    return round(PATCH_SIZE / factor), float(default_scale(processor)[0]) * factor


def analyse_image(
    model: Any,
    processor: Any,
    image: np.ndarray,
    name: str = "image",
    magnification: int = 40,
    min_size: int | None = None,
    progress: ProgressFn | None = None,
) -> ImageResult:
    """Predict the label map (and, when available, the nucleus instances) of one image.

    Args:
        model, processor: from :func:`load_demo_model` (model in eval mode).
        image: ``(H, W, 3)`` uint8 RGB, any size (tiled beyond one tile).
        name: file name, carried into the result and the downloads.
        magnification: 40 or 20 (see the module docstring).
        min_size: smallest nucleus kept by the instance post-processing, in image pixels
            (default: 10 pixels at 40x, the same area in microns at 20x: 3 pixels).
        progress: ``progress(fraction, message)`` called as tiles are predicted.

    Returns:
        the :class:`ImageResult`.
    """
    from ..inference import predict_keyed

    tile_size, scale = tiling_for(processor, magnification)
    if min_size is None:
        min_size = math.ceil(MIN_NUCLEUS_PIXELS_40X * (magnification / 40) ** 2)
    report = None
    if progress is not None:

        def report(done: int, total: int) -> None:
            progress(done / max(total, 1), f"{name}: predicting")

    if not instances_available():
        # predict_keyed on one image is predict_image: what `pannuke-hf predict` writes
        ((_, labels),) = predict_keyed(
            model, processor, [(name, image)], tile_size=tile_size, scale=scale, progress=report
        )
        return ImageResult(name, image, labels, magnification, id2label=_model_id2label(model))

    from ..inference import predict_instances_keyed

    # one tiled pass gives the label map and the nuclei, as `pannuke-hf predict --instances`
    ((_, found),) = predict_instances_keyed(
        model,
        processor,
        [(name, image)],
        tile_size=tile_size,
        scale=scale,
        min_size=min_size,
        progress=report,
    )
    result = ImageResult(name, image, found.labels, magnification, id2label=_model_id2label(model))
    result.instances = np.asarray(found.instances, dtype=np.int32)
    result.segments_info = list(found.segments_info)
    return result


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def _class_of_ids(instances: np.ndarray, segments_info: Sequence[dict[str, Any]]) -> list[int]:
    """Class label of nucleus id k at position k - 1 (0 for ids without an entry)."""
    top = int(instances.max(initial=0))
    classes = [0] * top
    for seg in segments_info:
        if 1 <= int(seg["id"]) <= top:
            classes[int(seg["id"]) - 1] = int(seg["label_id"])
    return classes


def render_overlay(result: ImageResult, alpha: float = 0.5, outlines: bool = True) -> np.ndarray:
    """The image with class colours blended in at opacity ``alpha`` and nucleus outlines.

    Args:
        result: from :func:`analyse_image`.
        alpha: weight of the class colour, 0 (image only) to 1 (colour only).
        outlines: draw each nucleus' boundary in its class colour (instance path only); the
            outlines stay visible at any opacity.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    from ..visualization import instance_outlines, overlay

    alpha = float(min(max(alpha, 0.0), 1.0))
    picture = overlay(result.image, result.labels, alpha=alpha)
    if outlines and result.instances is not None and result.instances.any():
        classes = _class_of_ids(result.instances, result.segments_info)
        picture = instance_outlines(picture, result.instances, labels=classes)
    return picture


def legend_html() -> str:
    """The class legend of the page: a palette swatch and the full class name per nucleus class."""
    items = []
    for k in range(1, NUM_LABELS):
        r, g, b = PALETTE[k]
        items.append(
            f'<span class="pannuke-legend-item" style="margin-right:1.2em;white-space:nowrap">'
            f'<span style="display:inline-block;width:1em;height:1em;vertical-align:middle;'
            f'border:1px solid #333;background:rgb({r},{g},{b})"></span> {CLASS_FULL_NAMES[k]}</span>'
        )
    return '<div id="pannuke-legend">' + "".join(items) + "</div>"


# ---------------------------------------------------------------------------------------------
# Tables and files
# ---------------------------------------------------------------------------------------------


def _nucleus_records(result: ImageResult) -> list[dict[str, Any]]:
    from ..exports import nuclei_records

    return nuclei_records(result.instances, result.segments_info, result.id2label)


def _model_id2label(model: Any) -> dict[int, str]:
    """The model's class names by label id (the package's names where the config has none)."""
    names = getattr(getattr(model, "config", None), "id2label", None) or {}
    return dict(enumerate(CLASS_NAMES)) | {int(i): str(n) for i, n in names.items()}


def summary_rows(results: Sequence[ImageResult]) -> list[list[Any]]:
    """The counts table: one row per image and nucleus class, columns :data:`SUMMARY_HEADERS`.

    ``nuclei`` and the areas come from the instance map (empty cells without the instance path);
    ``label-map pixels`` counts the class in the label map, the number ``pannuke-hf predict`` puts
    in ``class_counts.csv`` for the same image.
    """
    rows: list[list[Any]] = []
    for result in results:
        pixels = np.bincount(result.labels.ravel(), minlength=NUM_LABELS)
        area_um2 = result.microns_per_pixel**2
        per_class: dict[int, list[int]] = {}
        if result.instances is not None:
            label_of = {int(s["id"]): int(s["label_id"]) for s in result.segments_info}
            for record in _nucleus_records(result):
                per_class.setdefault(label_of[int(record["id"])], []).append(int(record["area"]))
        for k in range(1, NUM_LABELS):
            nuclei: int | None
            area_px: int | None
            mean_um2: float | None
            if result.instances is None:
                nuclei = area_px = mean_um2 = None
            else:
                areas = per_class.get(k, [])
                nuclei, area_px = len(areas), int(sum(areas))
                mean_um2 = round(area_px / len(areas) * area_um2, 1) if areas else None
            rows.append([result.name, CLASS_FULL_NAMES[k], nuclei, area_px, mean_um2, int(pixels[k])])
    return rows


def _safe_stem(name: str) -> str:
    stem = Path(name).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def write_summary_csv(rows: Sequence[Sequence[Any]], path: str | Path) -> Path:
    """Write the counts table (:func:`summary_rows`) as CSV with :data:`SUMMARY_HEADERS`."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_HEADERS)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return path


def write_downloads(result: ImageResult, folder: str | Path, stem: str | None = None) -> list[Path]:
    """Write the files offered for one image into ``folder``.

    ``<stem>_labels.png`` (uint8 label values 0-5, as ``pannuke-hf predict`` writes them); with
    instances also ``<stem>_instances.png`` (16-bit ids),
    ``<stem>_nuclei.csv`` (one row per nucleus) and ``<stem>_nuclei.geojson`` (QuPath detections),
    written by :mod:`pannuke_hf.exports`. ``stem`` defaults to the file name without suffix. The
    overlay is downloaded from the picture itself (it follows the opacity slider).

    Returns:
        the paths written.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or _safe_stem(result.name)
    written = [folder / f"{stem}_labels.png"]
    Image.fromarray(result.labels).save(written[0])
    if result.instances is not None:
        from ..exports import nuclei_geojson, write_geojson, write_instance_png, write_nuclei_csv

        id2label = result.id2label
        instance_png = folder / f"{stem}_instances.png"
        write_instance_png(result.instances, instance_png)
        nuclei_csv = folder / f"{stem}_nuclei.csv"
        write_nuclei_csv(_nucleus_records(result), nuclei_csv)
        geojson = folder / f"{stem}_nuclei.geojson"
        write_geojson(nuclei_geojson(result.instances, result.segments_info, id2label), geojson)
        written += [instance_png, nuclei_csv, geojson]
    return written


# ---------------------------------------------------------------------------------------------
# One click of the page: several uploads
# ---------------------------------------------------------------------------------------------


@dataclass
class BatchOutput:
    """What one run of the page produces for a set of uploads.

    Attributes:
        results: one :class:`ImageResult` per image that could be processed, in upload order.
        errors: one readable message per upload that could not (naming the file).
        rows: the counts table (:func:`summary_rows`) of ``results``.
        files: the downloads (per image, see :func:`write_downloads`, then ``summary.csv``).
    """

    results: list[ImageResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def status_markdown(self) -> str:
        """The status line(s) of the page: what was done, then every refused file."""
        lines = []
        if self.results:
            done = f"Segmented {len(self.results)} image(s)"
            if all(r.instances is not None for r in self.results):
                total = sum(len(r.segments_info) for r in self.results)
                done += f": {total} nuclei found."
            else:
                done += " (label map only: this installation has no nucleus instance path)."
            lines.append(done)
        if self.errors:
            lines.append(f"**Could not process {len(self.errors)} file(s):**")
            lines += [f"- {message}" for message in self.errors]
        if not lines:
            lines.append(
                "Upload one or more H&E images (PNG, JPEG, TIFF) or pick an example, then press *Segment*."
            )
        return "\n".join(lines)


def process_uploads(
    model: Any,
    processor: Any,
    paths: Sequence[str | Path] | None,
    folder: str | Path,
    magnification: int = 40,
    progress: ProgressFn | None = None,
) -> BatchOutput:
    """Read, predict and export every uploaded file; a bad file is reported, the others go on.

    Args:
        model, processor: from :func:`load_demo_model`.
        paths: the uploaded files (None or empty: nothing to do).
        folder: where the downloads are written (one sub-folder per call is the caller's choice).
        magnification: 40 or 20.
        progress: ``progress(fraction, message)`` over the whole batch.

    Returns:
        the :class:`BatchOutput`.
    """
    import logging

    out = BatchOutput()
    paths = [Path(p) for p in (paths or [])]
    used: set[str] = set()
    for i, path in enumerate(paths):
        name = _display_name(path)

        def step(fraction: float, message: str, i: int = i) -> None:
            if progress is not None:
                progress((i + fraction) / len(paths), message)

        try:
            step(0.0, f"{name}: reading")
            image = read_upload(path)
            result = analyse_image(
                model, processor, image, name=name, magnification=magnification, progress=step
            )
        except DemoInputError as err:
            out.errors.append(str(err))
            continue
        except ValueError as err:
            out.errors.append(f"{name}: {err}")
            continue
        except Exception as err:  # the page must keep serving; the log keeps the traceback
            logging.getLogger(__name__).exception("demo: processing %s failed", name)
            out.errors.append(f"{name}: unexpected error ({type(err).__name__}: {err})")
            continue
        stem, n = _safe_stem(name), 2
        while stem.lower() in used:
            stem, n = f"{_safe_stem(name)}_{n}", n + 1
        used.add(stem.lower())
        out.results.append(result)
        out.files += write_downloads(result, folder, stem=stem)
    if out.results:
        out.rows = summary_rows(out.results)
        out.files.append(write_summary_csv(out.rows, Path(folder) / "summary.csv"))
    return out


# ---------------------------------------------------------------------------------------------
# Example patches
# ---------------------------------------------------------------------------------------------


def make_example_patches(folder: str | Path = EXAMPLES_DIR) -> list[Path]:
    """Write the bundled example patches (generated, see :data:`EXAMPLE_PATCHES`) as PNG files.

    Run once to (re)create ``pannuke_hf/demo/examples``; the files are shipped with the package.
    """
    from PIL import Image

    from ..data.synthetic import make_synthetic_patch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fold, index in EXAMPLE_PATCHES:
        image, _, tissue = make_synthetic_patch(EXAMPLE_SEED, fold, index)
        path = folder / f"generated_{tissue.lower()}_{fold}_{index}.png"
        Image.fromarray(image.astype(np.uint8)).save(path, optimize=True)
        paths.append(path)
    return paths


def example_paths() -> list[Path]:
    """The bundled example patches, sorted by name."""
    return sorted(EXAMPLES_DIR.glob("*.png"))
