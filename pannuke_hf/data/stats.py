"""Class statistics of a split: per class, the images containing it and its share of pixels.

This is the reference project's statistics table (one ``Num.`` and one ``Pct. (%)`` column per
split), with the correct class names. It is computed in one streaming pass over the
``semantic_mask`` column: one label map in memory at a time, for map-style and streaming
(``IterableDataset``) splits alike.

Example::

    folds = datasets.load_dataset("pannuke_hf", data_dir="raw/")
    stats = {name: class_statistics(split) for name, split in folds.items()}
    print(statistics_table(stats))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..constants import CLASS_FULL_NAMES, IGNORE_INDEX, NUM_LABELS

__all__ = ["ClassStatistics", "class_statistics", "statistics_table"]


@dataclass(frozen=True)
class ClassStatistics:
    """Counts of one split.

    Attributes:
        num_images: label maps seen.
        images_with: (NUM_LABELS,) number of images containing each label at least once.
        pixels: (NUM_LABELS,) pixels of each label over the split.
        ignored_images: images with at least one ignored (255) pixel.
        ignored_pixels: pixels labelled 255 (void pixels when the builder ignores them).
    """

    num_images: int
    images_with: np.ndarray
    pixels: np.ndarray
    ignored_images: int = 0
    ignored_pixels: int = 0

    @property
    def total_pixels(self) -> int:
        """All pixels of the split, ignored ones included."""
        return int(self.pixels.sum()) + self.ignored_pixels

    @property
    def percent(self) -> np.ndarray:
        """(NUM_LABELS,) share of the split's pixels of each label, in percent."""
        total = self.total_pixels
        return self.pixels * (100.0 / total) if total else np.zeros(NUM_LABELS)


def _label_maps(dataset) -> Iterable[tuple[str, np.ndarray]]:
    """Yield ``(row name, label map (H, W) uint8)`` of every row, decoding one at a time."""
    columns = ["id", "semantic_mask"] if "id" in (dataset.column_names or []) else ["semantic_mask"]
    for position, row in enumerate(dataset.select_columns(columns)):
        name = row.get("id", f"row {position}")
        label_map = np.asarray(row["semantic_mask"])
        if label_map.ndim != 2 or label_map.dtype != np.uint8:
            raise ValueError(
                f"{name}: semantic_mask must be a single-channel uint8 map, "
                f"got shape {label_map.shape} dtype {label_map.dtype}"
            )
        yield name, label_map


def class_statistics(dataset) -> ClassStatistics:
    """Count the images containing each label and the pixels of each label in a split.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` with a ``semantic_mask`` column
            (``Image``, mode "L", values 0-5 or 255 for ignored pixels).

    Returns:
        The split's :class:`ClassStatistics`.

    Raises:
        ValueError: a label map with a value other than 0-5 or 255 (the row's id is named).
    """
    if "semantic_mask" not in (dataset.column_names or []):
        raise KeyError(f"the dataset has no 'semantic_mask' column (columns: {dataset.column_names})")
    images_with = np.zeros(NUM_LABELS, dtype=np.int64)
    pixels = np.zeros(NUM_LABELS, dtype=np.int64)
    num_images = ignored_images = ignored_pixels = 0
    for name, label_map in _label_maps(dataset):
        counts = np.bincount(label_map.ravel(), minlength=256)
        unknown = np.flatnonzero(counts[NUM_LABELS:]) + NUM_LABELS
        unknown = unknown[unknown != IGNORE_INDEX]
        if unknown.size:
            raise ValueError(
                f"{name}: semantic_mask holds unknown labels {unknown.tolist()}; "
                f"expected 0-{NUM_LABELS - 1} or {IGNORE_INDEX}"
            )
        num_images += 1
        pixels += counts[:NUM_LABELS]
        images_with += counts[:NUM_LABELS] > 0
        ignored_pixels += int(counts[IGNORE_INDEX])
        ignored_images += int(counts[IGNORE_INDEX] > 0)
    return ClassStatistics(num_images, images_with, pixels, ignored_images, ignored_pixels)


def statistics_table(stats: Mapping[str, ClassStatistics], digits: int = 2) -> str:
    """The reference's statistics table, as Markdown.

    Args:
        stats: split name -> its :class:`ClassStatistics`, in column order.
        digits: decimals of the percentages.

    Returns:
        A Markdown table: one row per label (value and correct name), and per split the
        number of images containing the label (``Num.``) and its percent of pixels (``Pct. ... (%)``).
        An extra ``ignored (255)`` row appears when a split has ignored pixels.
    """
    header = ["Label", "Class Name"]
    for split in stats:
        header += [f"Num. {split}", f"Pct. {split} (%)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["--:", ":--"] + ["--:"] * (2 * len(stats))) + "|",
    ]
    for label, class_name in enumerate(CLASS_FULL_NAMES):
        cells = [str(label), class_name]
        for split_stats in stats.values():
            cells += [str(int(split_stats.images_with[label])), f"{split_stats.percent[label]:.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(s.ignored_pixels for s in stats.values()):
        cells = [str(IGNORE_INDEX), "ignored (void)"]
        for s in stats.values():
            share = 100.0 * s.ignored_pixels / s.total_pixels if s.total_pixels else 0.0
            cells += [str(s.ignored_images), f"{share:.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["", "all images"]
    for s in stats.values():
        cells += [str(s.num_images), f"{100.0 if s.total_pixels else 0.0:.{digits}f}"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
