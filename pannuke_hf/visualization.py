"""Pictures of PanNuke patches, masks and predictions, shared by the notebooks and ``pannuke-hf predict``.

Everything that returns an image works on numpy arrays and returns ``(H, W, 3)`` uint8 RGB arrays
(numpy/PIL only). Functions that draw matplotlib figures (``plot_*``, ``legend_handles``) import
matplotlib lazily, so the command-line tools never need it.

Colours and class names come from :mod:`pannuke_hf.constants` (``PALETTE``, ``CLASS_FULL_NAMES``);
they are never redefined here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .constants import BACKGROUND_LABEL, CLASS_FULL_NAMES, IGNORE_INDEX, NUM_LABELS, PALETTE
from .images import to_rgb_uint8  # re-exported: the conversion lives in pannuke_hf.images

#: Colour drawn for ``IGNORE_INDEX`` pixels (padding / void) in label maps.
IGNORE_COLOR: tuple[int, int, int] = (255, 255, 255)

#: Pixel categories of :func:`error_categories`, in code order, with their display colour.
ERROR_CATEGORIES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("correct background", (0, 0, 0)),
    ("correct nucleus class", (60, 180, 75)),
    ("wrong nucleus class", (255, 225, 25)),
    ("false positive (reference background)", (230, 25, 75)),
    ("false negative (predicted background)", (0, 130, 200)),
    ("ignored", (128, 128, 128)),
)

__all__ = [
    "ERROR_CATEGORIES",
    "IGNORE_COLOR",
    "colorize",
    "error_categories",
    "error_map",
    "instance_boundaries",
    "instance_outlines",
    "legend_handles",
    "legend_image",
    "overlay",
    "palette_lut",
    "plot_class_bars",
    "plot_class_composition",
    "plot_nucleus_sizes",
    "plot_patches_per_tissue",
    "summarize_patches",
    "plot_confusion_matrix",
    "plot_instance_comparison",
    "plot_tissue_pq",
    "instance_classes",
    "plot_patch_grid",
    "plot_training_curves",
    "to_rgb_uint8",
]


# ---------------------------------------------------------------------------------------------
# Basic conversions
# ---------------------------------------------------------------------------------------------


def palette_lut() -> np.ndarray:
    """Look-up table label value -> colour: ``(256, 3)`` uint8.

    Rows 0-5 are ``constants.PALETTE``, row ``IGNORE_INDEX`` is :data:`IGNORE_COLOR`, all other
    rows are 0 (they are never used: :func:`colorize` rejects unknown labels).
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(PALETTE)] = np.asarray(PALETTE, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_COLOR
    return lut


def _as_label_map(label_map: Any, name: str = "label_map") -> np.ndarray:
    """A label map as a 2-D integer array; PIL images and torch tensors are accepted."""
    if hasattr(label_map, "detach"):  # torch tensor, without importing torch
        label_map = label_map.detach().cpu().numpy()
    arr = np.asarray(label_map)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array of labels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if (
            np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))
        ):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")
    return arr


def _check_labels(arr: np.ndarray, name: str = "label_map") -> None:
    """Raise if ``arr`` holds values outside 0..NUM_LABELS-1 and IGNORE_INDEX."""
    bad = (arr < 0) | ((arr >= NUM_LABELS) & (arr != IGNORE_INDEX))
    if bad.any():
        values = np.unique(arr[bad])[:10].tolist()
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} holds unknown labels {values} (first at pixel {pos}); "
            f"expected 0..{NUM_LABELS - 1} or {IGNORE_INDEX}"
        )


# ---------------------------------------------------------------------------------------------
# Label maps, overlays, outlines, errors
# ---------------------------------------------------------------------------------------------


def colorize(label_map: Any) -> np.ndarray:
    """Colour a semantic label map with the package palette.

    Args:
        label_map: ``(H, W)`` labels 0-5 (``IGNORE_INDEX`` allowed, drawn in :data:`IGNORE_COLOR`).

    Returns:
        ``(H, W, 3)`` uint8 RGB, pixel of label ``k`` = ``constants.PALETTE[k]``.
    """
    arr = _as_label_map(label_map)
    _check_labels(arr)
    return palette_lut()[arr.astype(np.intp)]


def overlay(
    image: Any,
    label_map: Any,
    alpha: float = 0.5,
    ignore_background: bool = True,
) -> np.ndarray:
    """Blend a colourised label map over an image.

    Args:
        image: ``(H, W[, C])`` image (anything :func:`to_rgb_uint8` accepts).
        label_map: ``(H, W)`` labels 0-5 (``IGNORE_INDEX`` allowed).
        alpha: weight of the label colour, 0 (image only) to 1 (colour only).
        ignore_background: if True, background pixels (label 0) keep the image unchanged.

    Returns:
        ``(H, W, 3)`` uint8: ``round((1 - alpha) * image + alpha * PALETTE[label])`` per pixel.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_uint8(image)
    labels = _as_label_map(label_map)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and label_map {labels.shape} differ in size")
    colours = colorize(labels).astype(np.float64)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * colours
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    if ignore_background:
        keep = labels == BACKGROUND_LABEL
        out[keep] = rgb[keep]
    return out


def instance_boundaries(instance_map: Any) -> np.ndarray:
    """Inner boundary of every instance: ``(H, W)`` bool.

    A pixel is on the boundary when it belongs to an instance (id > 0) and one of its 4
    neighbours has another id (or lies outside the image).
    """
    ids = _as_label_map(instance_map, "instance_map")
    padded = np.pad(ids, 1, mode="constant", constant_values=-1)
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    return differs & (ids > 0)


def _grow_inside(mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Grow ``mask`` by one pixel (4-neighbours) into pixels of the same instance."""
    grown = mask.copy()
    grown[1:] |= mask[:-1] & (ids[1:] == ids[:-1])
    grown[:-1] |= mask[1:] & (ids[:-1] == ids[1:])
    grown[:, 1:] |= mask[:, :-1] & (ids[:, 1:] == ids[:, :-1])
    grown[:, :-1] |= mask[:, 1:] & (ids[:, :-1] == ids[:, 1:])
    return grown & (ids > 0)


def instance_outlines(
    image: Any,
    instance_map: Any,
    labels: Sequence[int] | None = None,
    color: tuple[int, int, int] = (255, 255, 255),
    thickness: int = 1,
) -> np.ndarray:
    """Draw the outline of every nucleus over an image.

    Args:
        image: ``(H, W[, C])`` image.
        instance_map: ``(H, W)`` instance ids, 0 = no nucleus, 1..K (a 16-bit map is fine).
        labels: optional class label (1-5) of every instance: a sequence with the label of
            instance ``k`` at position ``k - 1`` (the dataset's ``instance_labels``), a mapping
            ``{id: label}``, or the post-processing's ``segments_info``; outlines are then drawn in
            the class colour.
        color: outline colour when ``labels`` is None.
        thickness: outline width in pixels, drawn inside each nucleus.

    Returns:
        ``(H, W, 3)`` uint8 image with the outlines drawn.
    """
    rgb = to_rgb_uint8(image).copy()
    ids = _as_label_map(instance_map, "instance_map")
    if ids.shape != rgb.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and instance_map {ids.shape} differ in size")
    edge = instance_boundaries(ids)
    for _ in range(max(1, thickness) - 1):
        edge = _grow_inside(edge, ids)
    if labels is None:
        rgb[edge] = color
        return rgb
    top = int(ids.max(initial=0))
    lab = instance_classes(labels, top)
    if top > len(lab):
        raise ValueError(f"instance_map holds id {top} but only {len(lab)} instance labels were given")
    # id k -> class of instance k (id 0 unused)
    id_to_class = np.concatenate([[BACKGROUND_LABEL], lab])
    _check_labels(id_to_class[None, :], "labels")
    rgb[edge] = palette_lut()[id_to_class[ids[edge]]]
    return rgb


def instance_classes(classes: Any, num_instances: int) -> np.ndarray:
    """The class label of instances 1..``num_instances`` as an int64 array (item k-1 = instance k).

    ``classes``: a sequence of labels (the dataset's ``instance_labels``), a mapping
    ``{id: label}`` (ids without an entry get 0) or a list of ``segments_info`` dicts
    (``{"id", "label_id", ...}``).
    """
    if isinstance(classes, Mapping):
        pairs = {int(k): int(v) for k, v in classes.items()}
    elif len(classes) and isinstance(classes[0], Mapping):
        pairs = {int(s["id"]): int(s["label_id"]) for s in classes}
    else:
        return np.asarray(classes, dtype=np.int64).reshape(-1)
    out = np.zeros(max([num_instances, *pairs]), dtype=np.int64)
    for k, v in pairs.items():
        if k >= 1:
            out[k - 1] = v
    return out


def error_categories(pred: Any, ref: Any, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-pixel agreement of a prediction with the reference: ``(H, W)`` uint8 codes.

    Codes index :data:`ERROR_CATEGORIES`: 0 correct background, 1 correct nucleus class,
    2 nucleus of the wrong class, 3 false positive (predicted nucleus on reference background),
    4 false negative (predicted background on a reference nucleus), 5 ignored reference pixel.
    """
    p = _as_label_map(pred, "pred")
    r = _as_label_map(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred {p.shape} and ref {r.shape} differ in size")
    bg = BACKGROUND_LABEL
    codes = np.full(p.shape, 2, dtype=np.uint8)
    codes[(p == r) & (r == bg)] = 0
    codes[(p == r) & (r != bg)] = 1
    codes[(p != bg) & (r == bg)] = 3
    codes[(p == bg) & (r != bg)] = 4
    codes[r == ignore_index] = 5
    return codes


def error_map(pred: Any, ref: Any, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Colour picture of :func:`error_categories`: ``(H, W, 3)`` uint8 (colours in ``ERROR_CATEGORIES``)."""
    colours = np.asarray([c for _, c in ERROR_CATEGORIES], dtype=np.uint8)
    return colours[error_categories(pred, ref, ignore_index)]


# ---------------------------------------------------------------------------------------------
# Legends
# ---------------------------------------------------------------------------------------------


def legend_handles(class_ids: Sequence[int] | None = None, errors: bool = False) -> list[Any]:
    """Matplotlib legend handles: one coloured patch per class (or per error category).

    Args:
        class_ids: labels to include (default all six), named with ``constants.CLASS_FULL_NAMES``.
        errors: if True, return the :data:`ERROR_CATEGORIES` entries instead.

    Returns:
        a list of ``matplotlib.patches.Patch`` for ``ax.legend(handles=...)``.
    """
    from matplotlib.patches import Patch

    if errors:
        entries = list(ERROR_CATEGORIES)
    else:
        ids = range(NUM_LABELS) if class_ids is None else class_ids
        entries = [(CLASS_FULL_NAMES[i], PALETTE[i]) for i in ids]
    return [Patch(facecolor=np.asarray(c) / 255.0, edgecolor="black", label=n) for n, c in entries]


def legend_image(class_ids: Sequence[int] | None = None, swatch: int = 16, width: int = 240) -> np.ndarray:
    """A legend as a small picture (no matplotlib): one swatch + full class name per row.

    Returns:
        ``(rows * (swatch + 4) + 4, width, 3)`` uint8 RGB on white.
    """
    ids = list(range(NUM_LABELS) if class_ids is None else class_ids)
    row = swatch + 4
    canvas = Image.new("RGB", (width, row * len(ids) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, k in enumerate(ids):
        y = 4 + i * row
        draw.rectangle([4, y, 4 + swatch, y + swatch], fill=tuple(PALETTE[k]), outline=(0, 0, 0))
        draw.text((swatch + 12, y + 2), CLASS_FULL_NAMES[k], fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, imported lazily)
# ---------------------------------------------------------------------------------------------


def plot_patch_grid(
    images: Sequence[Any],
    label_maps: Sequence[Any] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    alpha: float = 0.5,
    size: float = 2.5,
    legend: bool = True,
) -> Any:
    """A grid of patches, each with its label map overlaid, and a class legend.

    Args:
        images: patches ``(H, W[, C])``.
        label_maps: one ``(H, W)`` label map per patch, or None (for all, or per panel: image only).
        titles: one title per patch.
        ncols: columns of the grid.
        alpha, size: overlay weight and inches per panel.
        legend: draw the class legend (full names, package palette) below the grid.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    if n == 0:
        raise ValueError("plot_patch_grid needs at least one image")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.8 if legend else 0)))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i >= n:
            continue
        if label_maps is None or label_maps[i] is None:
            picture = to_rgb_uint8(images[i])
        else:
            picture = overlay(images[i], label_maps[i], alpha)
        ax.imshow(picture)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if legend:
        fig.legend(handles=legend_handles(range(1, NUM_LABELS)), loc="lower center", ncol=3, fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
    else:
        fig.tight_layout()
    return fig


def plot_confusion_matrix(
    matrix: Any,
    class_names: Sequence[str] = CLASS_FULL_NAMES,
    normalize: bool = True,
    ax: Any = None,
) -> Any:
    """Heat map of a confusion matrix (rows = reference, columns = prediction).

    Args:
        matrix: ``(C, C)`` counts.
        class_names: axis labels (default: full class names).
        normalize: show each row as fractions of its reference pixels.
        ax: optional matplotlib axes to draw in.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(
            f"confusion matrix of shape {cm.shape} does not match {len(class_names)} class names"
        )
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5))
    else:
        fig = ax.figure
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for (i, j), v in np.ndenumerate(shown):
        text = f"{v:.2f}" if normalize else f"{int(v)}"
        ax.text(
            j,
            i,
            text,
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > shown.max() / 2 else "black",
        )
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_class_bars(
    scores: Mapping[str, Sequence[float]],
    class_names: Sequence[str] = CLASS_FULL_NAMES,
    ax: Any = None,
) -> Any:
    """Grouped bars of per-class scores, e.g. ``{"IoU": [...], "Dice": [...]}`` in percent.

    NaN entries (class absent from prediction and reference) are drawn as empty bars.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(scores))
    for i, (name, values) in enumerate(scores.items()):
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape != (len(class_names),):
            raise ValueError(f"scores[{name!r}] has {vals.shape} values for {len(class_names)} classes")
        ax.bar(x + (i - (len(scores) - 1) / 2) * width, np.nan_to_num(vals), width, label=name)
    ax.set_xticks(x, class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_training_curves(
    log_history: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> Any:
    """Loss and metric curves from a Trainer's ``state.log_history`` (or ``trainer_state.json``).

    Args:
        log_history: the list of dicts Trainer logs (``loss`` per logging step, ``eval_*`` per
            evaluation), each with a ``step``.
        metrics: ``eval_*`` keys to plot beside the losses (default: every scalar ``eval_*`` key
            except loss and runtime figures).

    Returns:
        the matplotlib ``Figure`` (left: training and evaluation loss; right: metrics).
    """
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [e for e in log_history if "eval_loss" in e or any(k.startswith("eval_") for k in e)]
    if metrics is None:
        skip = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
        keys: list[str] = []
        for e in evals:
            for k, v in e.items():
                if k.startswith("eval_") and k not in skip and isinstance(v, int | float) and k not in keys:
                    keys.append(k)
        metrics = keys
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.5))
    if train:
        steps, losses = zip(*train)
        ax_loss.plot(steps, losses, label="train loss")
    ev_loss = [(e["step"], e["eval_loss"]) for e in evals if "eval_loss" in e]
    if ev_loss:
        steps, losses = zip(*ev_loss)
        ax_loss.plot(steps, losses, "o-", label="eval loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in metrics:
        points = [(e["step"], e[key]) for e in evals if key in e]
        if points:
            steps, values = zip(*points)
            ax_metric.plot(steps, values, "o-", label=key.removeprefix("eval_"))
    ax_metric.set_xlabel("step")
    ax_metric.set_ylabel("metric")
    if metrics:
        ax_metric.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Dataset summaries for the exploration figures
# ---------------------------------------------------------------------------------------------


def summarize_patches(splits: Mapping[str, Any], max_per_split: int | None = None) -> tuple[Any, Any]:
    """One pass over built PanNuke splits: a table of patches and a table of nuclei.

    Args:
        splits: split name -> ``datasets.Dataset`` with the builder's features (``tissue``,
            ``semantic_mask``, ``instance_mask``, ``instance_labels``), e.g. the ``DatasetDict`` of
            ``load_dataset("pannuke_hf", data_dir=...)``.
        max_per_split: read only the first N patches of each split (None: all).

    Returns:
        ``(patches, nuclei)`` pandas DataFrames. ``patches``: one row per patch with ``split``,
        ``id``, ``tissue`` (name), ``pixels_<class>`` and ``nuclei_<class>`` for every class name
        of ``constants.CLASS_NAMES`` (nuclei columns for the five nucleus classes). ``nuclei``: one
        row per nucleus with ``split``, ``id``, ``tissue``, ``class`` (short name), ``area_px``
        and ``area_um2`` (at ``constants.MICRONS_PER_PIXEL``).
    """
    import pandas as pd

    from .constants import CLASS_NAMES, MICRONS_PER_PIXEL

    patch_rows: list[dict[str, Any]] = []
    nucleus_parts: list[Any] = []
    for split, dataset in splits.items():
        tissue_names = dataset.features["tissue"].names
        rows = dataset if max_per_split is None else dataset.select(range(min(max_per_split, len(dataset))))
        columns = ["id", "tissue", "semantic_mask", "instance_mask", "instance_labels"]
        for row in rows.select_columns(columns):
            semantic = np.asarray(row["semantic_mask"])
            instances = np.asarray(row["instance_mask"]).astype(np.int64)
            labels = np.asarray(row["instance_labels"], dtype=np.int64)
            tissue = tissue_names[row["tissue"]]
            pixels = np.bincount(semantic.ravel(), minlength=256)[:NUM_LABELS]
            nuclei = np.bincount(labels, minlength=NUM_LABELS)
            record: dict[str, Any] = {"split": split, "id": row["id"], "tissue": tissue}
            record.update({f"pixels_{n}": int(pixels[k]) for k, n in enumerate(CLASS_NAMES)})
            record.update({f"nuclei_{n}": int(nuclei[k]) for k, n in enumerate(CLASS_NAMES) if k})
            patch_rows.append(record)
            if len(labels):
                areas = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1 : len(labels) + 1]
                nucleus_parts.append(
                    pd.DataFrame(
                        {
                            "split": split,
                            "id": row["id"],
                            "tissue": tissue,
                            "class": [CLASS_NAMES[k] for k in labels],
                            "area_px": areas,
                        }
                    )
                )
    patches = pd.DataFrame(patch_rows)
    columns = ["split", "id", "tissue", "class", "area_px"]
    nuclei_df = (
        pd.concat(nucleus_parts, ignore_index=True) if nucleus_parts else pd.DataFrame(columns=columns)
    )
    nuclei_df["area_um2"] = nuclei_df["area_px"].astype(float) * MICRONS_PER_PIXEL**2
    return patches, nuclei_df


def plot_patches_per_tissue(patches: Any) -> Any:
    """Bars of patches per tissue, one colour per split (input: ``summarize_patches``' first table).

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    from .constants import TISSUES

    counts = patches.groupby(["tissue", "split"]).size().unstack("split", fill_value=0)
    # every tissue on the axis, in the release's order, even those without patches here
    order = list(TISSUES) + sorted(set(counts.index) - set(TISSUES))
    counts = counts.reindex(order, fill_value=0)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    counts.plot.bar(ax=ax, stacked=True, width=0.8)
    ax.set_xlabel("")
    ax.set_ylabel("patches")
    ax.set_title("Patches per tissue and split")
    fig.tight_layout()
    return fig


def plot_class_composition(patches: Any) -> Any:
    """Left: share of pixels of each class; right: nuclei per patch of each nucleus class (box plot).

    Input: the patch table of :func:`summarize_patches`. Colours: ``constants.PALETTE``.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    from .constants import CLASS_NAMES

    colours = np.asarray(PALETTE, dtype=np.float64) / 255.0
    pixels = np.asarray([patches[f"pixels_{n}"].sum() for n in CLASS_NAMES], dtype=np.float64)
    shares = 100.0 * pixels / max(pixels.sum(), 1.0)
    fig, (ax_share, ax_box) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_share.bar(range(NUM_LABELS), shares, color=colours, edgecolor="black")
    ax_share.set_xticks(range(NUM_LABELS), CLASS_FULL_NAMES, rotation=30, ha="right", fontsize=8)
    ax_share.set_ylabel("% of pixels")
    ax_share.set_yscale("log")
    ax_share.set_title("Pixel share per class")
    data = [patches[f"nuclei_{CLASS_NAMES[k]}"].to_numpy() for k in range(1, NUM_LABELS)]
    box = ax_box.boxplot(data, patch_artist=True)
    for patch, colour in zip(box["boxes"], colours[1:]):
        patch.set_facecolor(colour)
    ax_box.set_xticks(range(1, NUM_LABELS), CLASS_FULL_NAMES[1:], rotation=30, ha="right", fontsize=8)
    ax_box.set_ylabel("nuclei per patch")
    ax_box.set_title("Nuclei per patch by class")
    fig.tight_layout()
    return fig


def plot_nucleus_sizes(nuclei: Any, bins: int = 40) -> Any:
    """Histograms of nucleus areas (square microns) per class, palette colours, log-spaced bins.

    Input: the nucleus table of :func:`summarize_patches`.

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    from .constants import CLASS_NAMES

    fig, ax = plt.subplots(figsize=(7, 3.8))
    areas = nuclei["area_um2"].to_numpy(dtype=np.float64)
    areas = areas[areas > 0]
    if len(areas):
        edges = np.geomspace(areas.min(), areas.max() * 1.0001, bins + 1)
        for k in range(1, NUM_LABELS):
            values = nuclei.loc[nuclei["class"] == CLASS_NAMES[k], "area_um2"].to_numpy(dtype=np.float64)
            if len(values):
                ax.hist(
                    values,
                    bins=edges,
                    histtype="step",
                    linewidth=1.8,
                    color=np.asarray(PALETTE[k]) / 255.0,
                    label=f"{CLASS_FULL_NAMES[k]} (n={len(values)})",
                )
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    ax.set_xlabel("nucleus area (µm²)")
    ax.set_ylabel("nuclei")
    ax.set_title("Nucleus size distribution")
    fig.tight_layout()
    return fig


def plot_instance_comparison(
    image: Any,
    true_instances: Any,
    true_classes: Any,
    pred_instances: Any,
    pred_classes: Any,
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
    thickness: int = 1,
    axes: Any = None,
) -> Any:
    """Image, ground-truth nuclei and predicted nuclei side by side, outlined in their class colours.

    Args:
        image: ``(H, W[, C])`` image.
        true_instances, pred_instances: ``(H, W)`` instance maps (0 = no nucleus).
        true_classes, pred_classes: class of each nucleus (see :func:`instance_classes`: the
            dataset's ``instance_labels``, ``{id: label}`` or ``segments_info``).
        titles: the three panel titles (nucleus counts are appended to the last two).
        thickness: outline width in pixels.
        axes: three matplotlib axes to draw into (default: a new 1x3 figure).

    Returns:
        the matplotlib ``Figure``.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.8))
    else:
        fig = axes[0].figure
    panels = [
        (to_rgb_uint8(image), titles[0]),
        (instance_outlines(image, true_instances, true_classes, thickness=thickness), titles[1]),
        (instance_outlines(image, pred_instances, pred_classes, thickness=thickness), titles[2]),
    ]
    counts = [None, _count_nuclei(true_instances), _count_nuclei(pred_instances)]
    for ax, (picture, title), count in zip(axes, panels, counts):
        ax.imshow(picture)
        ax.set_title(title if count is None else f"{title} ({count} nuclei)", fontsize=9)
        ax.axis("off")
    axes[-1].legend(
        handles=legend_handles(range(1, NUM_LABELS)), loc="upper left", bbox_to_anchor=(1, 1), fontsize=7
    )
    fig.tight_layout()
    return fig


def _count_nuclei(instance_map: Any) -> int:
    ids = _as_label_map(instance_map, "instance_map")
    return int(np.count_nonzero(np.bincount(ids.ravel())[1:])) if ids.size else 0


def plot_tissue_pq(
    per_tissue: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = ("bPQ", "mPQ"),
    ax: Any = None,
) -> Any:
    """Grouped horizontal bars of nucleus PQ per tissue, e.g. ``PanNukeInstanceMetrics().compute()["per_tissue"]``.

    Args:
        per_tissue: ``{tissue: {"bPQ": ..., "mPQ": ..., ...}}`` (fractions in [0, 1]; NaN = no
            nucleus of that kind in the tissue's ground truth, drawn as an empty bar).
        metrics: the keys drawn, one bar colour each.
        ax: matplotlib axes (default: a new figure sized for the number of tissues).

    Returns:
        the matplotlib ``Figure``; each metric's tissue average (the headline, a nan-mean over
        tissues) is drawn as a dashed line of the bar colour.
    """
    import matplotlib.pyplot as plt

    tissues = sorted(per_tissue)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.35 * max(3, len(tissues)) + 1))
    else:
        fig = ax.figure
    y = np.arange(len(tissues))
    height = 0.8 / max(1, len(metrics))
    for i, name in enumerate(metrics):
        values = np.array([per_tissue[t].get(name, np.nan) for t in tissues], dtype=np.float64)
        offset = (i - (len(metrics) - 1) / 2) * height
        bars = ax.barh(y + offset, np.nan_to_num(values), height, label=name)
        if np.isfinite(values).any():
            ax.axvline(np.nanmean(values), color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    ax.set_yticks(y, tissues, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("panoptic quality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
