"""The streaming accumulator of PanNuke's nucleus-level scores (see :mod:`.core` for the protocol).

Aggregation (the official one):

* per tissue, nan-mean over its images (mPQ, bPQ, DQ, SQ); the headline **mPQ / bPQ = nan-mean
  over the tissues** (19 in PanNuke). Images scored without a tissue form one group of their own,
  so without any tissue the headline equals the image average;
* ``mPQ_image`` / ``bPQ_image``: plain nan-means over images (what some papers report instead);
* class PQ / DQ / SQ: nan-mean over all images (not tissue-averaged);
* detection / classification F1: counts pooled over the whole set, then the formulas.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ...constants import CLASS_NAMES
from ...nuclei import (
    NUM_NUCLEUS_CLASSES,
    NucleiInputError,
    normalise_classes,
    release_nucleus_pixels,
    release_values,
    sparse_instances,
)
from .core import PQCounts, align, compact, pq_counts, score_image

#: Group name of images scored without a tissue.
NO_TISSUE: str = "(no tissue)"

# Columns of the per-image table: bPQ, bDQ, bSQ, then (PQ, DQ, SQ) per class.
_BINARY = slice(0, 3)


def _nanmean(values: np.ndarray, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _class_lookup(present: np.ndarray, classes: dict[int, int], where: str, who: str) -> np.ndarray:
    """Labels of the present nucleus ids (sorted), erroring on a nucleus without a class."""
    out = np.empty(len(present), dtype=np.int64)
    for i, k in enumerate(present.tolist()):
        label = classes.get(k)
        if label is None:
            raise NucleiInputError(f"{where}: {who} nucleus {k} is in the instance map but has no class")
        out[i] = label
    return out


def _f1(tp: float, fp: float, fn: float, weights: tuple[float, float] = (1.0, 1.0)) -> float:
    denominator = 2 * tp + weights[0] * fp + weights[1] * fn
    return 2 * tp / denominator if denominator else math.nan


class PanNukeInstanceMetrics:
    """Streaming PanNuke PQ / mPQ / bPQ / F1: a few floats per image, pooled F1 counts.

    Usage::

        metric = PanNukeInstanceMetrics()
        for true_map, true_labels, pred_map, pred_labels, tissue in ...:
            metric.update(true_map, true_labels, pred_map, pred_labels, tissue=tissue)
        # or, for release-format (H, W, 6) arrays: metric.update_release(true, pred, tissue)
        results = metric.compute()   # {"mPQ", "bPQ", "mPQ_image", ..., "per_tissue": {...}}

    Args:
        num_classes: nucleus classes (labels 1..num_classes; PanNuke: 5).
        radius: centroid pairing radius of the F1 scores in pixels (12 at 40x, 6 at 20x);
            ``None`` skips the F1 scores (PQ only, faster).
        class_names: names of labels 1..num_classes in the keys (default PanNuke's short names).
    """

    def __init__(
        self,
        num_classes: int = NUM_NUCLEUS_CLASSES,
        radius: float | None = 12.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if class_names is None:
            if num_classes != NUM_NUCLEUS_CLASSES:
                class_names = [str(c) for c in range(1, num_classes + 1)]
            else:
                class_names = CLASS_NAMES[1:]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if radius is not None and not radius > 0:
            raise ValueError(f"radius must be positive (pixels), got {radius}")
        self.num_classes = num_classes
        self.radius = radius
        self.class_names = list(class_names)
        self.reset()

    # ----------------------------------------------------------------------------------------
    # State
    # ----------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every image (start a new evaluation)."""
        self._rows: list[np.ndarray] = []  # per image: 3 + 3 * num_classes floats
        self._tissue_of_row: list[int] = []
        self._tissues: dict[str, int] = {}
        self._indices: list[int] = []
        self.detection = np.zeros(3, dtype=np.int64)
        self.per_class = np.zeros((self.num_classes, 5), dtype=np.int64)

    @property
    def num_images(self) -> int:
        """Images counted so far."""
        return len(self._rows)

    def merge(self, other: PanNukeInstanceMetrics) -> PanNukeInstanceMetrics:
        """Add another accumulator's images (e.g. from a worker process) to this one; returns self."""
        if (other.num_classes, other.radius) != (self.num_classes, self.radius):
            raise ValueError("cannot merge accumulators with different num_classes or radius")
        names = {i: name for name, i in other._tissues.items()}
        for row, t, index in zip(other._rows, other._tissue_of_row, other._indices):
            self._append(row, names[t], index)
        self.detection += other.detection
        self.per_class += other.per_class
        return self

    def _append(self, row: np.ndarray, tissue: str, index: int) -> None:
        self._rows.append(row)
        self._tissue_of_row.append(self._tissues.setdefault(tissue, len(self._tissues)))
        self._indices.append(index)

    def _record(self, scores: Any, tissue: str | None, index: int | None) -> dict[str, float]:
        row = np.empty(3 + 3 * self.num_classes)
        row[:3] = scores.binary
        row[3:] = scores.classes.reshape(-1)
        self._append(
            row, NO_TISSUE if tissue is None else str(tissue), len(self._rows) if index is None else index
        )
        self.detection += scores.detection
        self.per_class += scores.per_class
        return self._row_dict(row)

    def _row_dict(self, row: np.ndarray) -> dict[str, float]:
        values = row.tolist()
        pqs = [v for v in values[3::3] if v == v]  # v == v: not NaN
        out = {
            "bPQ": values[0],
            "bDQ": values[1],
            "bSQ": values[2],
            "mPQ": sum(pqs) / len(pqs) if pqs else math.nan,
        }
        for c, name in enumerate(self.class_names):
            out[f"PQ_{name}"], out[f"DQ_{name}"], out[f"SQ_{name}"] = values[3 + 3 * c : 6 + 3 * c]
        return out

    # ----------------------------------------------------------------------------------------
    # Updates
    # ----------------------------------------------------------------------------------------

    def _where(self, where: str | None, index: int | None) -> str:
        if where:
            return where
        return f"image {len(self._rows) if index is None else index}"

    def update(
        self,
        true_instances: Any,
        true_classes: Mapping[int, int] | Sequence[int] | np.ndarray,
        pred_instances: Any,
        pred_classes: Mapping[int, int] | Sequence[int] | np.ndarray,
        tissue: str | None = None,
        *,
        index: int | None = None,
        where: str | None = None,
    ) -> dict[str, float]:
        """Score one image given in the instance form.

        Args:
            true_instances, pred_instances: (H, W) instance maps (0 = no nucleus), integer or
                whole-valued float, any ids (not necessarily contiguous), same shape.
            true_classes, pred_classes: the class (label 1..num_classes) of each nucleus:
                ``{id: label}``, a sequence whose item k-1 is the label of nucleus k (the
                dataset's ``instance_labels``), or an (H, W) semantic map (majority vote per
                nucleus, :func:`~pannuke_hf.nuclei.classes_from_semantic`). Entries for ids absent
                from the map are ignored.
            tissue: the image's tissue (per-tissue aggregation); ``None`` for none.
            index: the image's index, recorded and used in error messages (default: running count).
            where: error-message prefix overriding ``"image <index>"``.

        Returns:
            The image's own numbers (``bPQ``, ``mPQ``, ``PQ_<class>`` ...).

        Raises:
            NucleiInputError: different shapes, bad ids, a nucleus without a class, a class
                outside 1..num_classes (all naming the image).
        """
        where = self._where(where, index)
        shape_t, shape_p = np.shape(true_instances), np.shape(pred_instances)
        if len(shape_t) != 2 or shape_t != shape_p:
            raise NucleiInputError(
                f"{where}: true and predicted instance maps must be 2-D of one shape, got {shape_t} and {shape_p}"
            )
        t_pixels, t_ids = sparse_instances(true_instances, where, "true instance ids")
        p_pixels, p_ids = sparse_instances(pred_instances, where, "predicted instance ids")
        pixels, t_vals, p_vals = align(shape_t[0] * shape_t[1], t_pixels, t_ids, p_pixels, p_ids)
        ti, ids_t, _ = compact(t_vals)
        pi, ids_p, _ = compact(p_vals)
        cls_t = _class_lookup(
            ids_t, self._classes(true_classes, true_instances, where, "true"), where, "true"
        )
        cls_p = _class_lookup(
            ids_p, self._classes(pred_classes, pred_instances, where, "predicted"), where, "predicted"
        )
        coords = _coords(pixels, shape_t[1])
        scores = score_image(ti, cls_t, pi, cls_p, coords, self.num_classes, self.radius)
        return self._record(scores, tissue, index)

    def _classes(self, classes: Any, ids: Any, where: str, who: str) -> dict[int, int]:
        if isinstance(classes, np.ndarray) and classes.ndim == 2:
            from ...nuclei import classes_from_semantic

            if classes.shape != np.shape(ids):
                raise NucleiInputError(
                    f"{where}: {who} semantic map {classes.shape} and instance map {np.shape(ids)} differ in shape"
                )
            return classes_from_semantic(ids, classes, where)
        return normalise_classes(classes, f"{where}: {who} classes", self.num_classes)

    def update_release(
        self,
        true: Any,
        pred: Any,
        tissue: str | None = None,
        *,
        index: int | None = None,
        where: str | None = None,
        sources: tuple[str, str] = ("truth", "prediction"),
    ) -> dict[str, float]:
        """Score one image given in the release form, exactly as the official script does.

        Args:
            true, pred: (H, W, 5) or (H, W, 6) arrays of instance ids per class channel (channel 5,
                background, is ignored), integer or whole-valued float, same (H, W).
            tissue, index, where: see :meth:`update`.
            sources: names of the truth and the prediction in error messages (e.g. file names).

        Returns:
            The image's own numbers.

        Raises:
            NucleiInputError: shapes, or NaN / infinite / fractional / negative ids (the image and
                the channel are named).
        """
        if self.num_classes != NUM_NUCLEUS_CLASSES:
            raise ValueError("update_release needs num_classes=5 (the release's class channels)")
        where = self._where(where, index)
        t_where, p_where = f"{sources[0]}: {where}", f"{sources[1]}: {where}"
        t_flat, t_nucleus = release_nucleus_pixels(true, t_where)
        p_flat, p_nucleus = release_nucleus_pixels(pred, p_where)
        shape, shape_p = np.shape(true)[:2], np.shape(pred)[:2]
        if shape != shape_p:
            raise NucleiInputError(f"{where}: truth and prediction differ in size: {shape} and {shape_p}")
        # Every computation runs on the pixels where either side has a nucleus.
        pixels = np.flatnonzero(t_nucleus | p_nucleus)
        t_ids = release_values(t_flat, pixels, t_where)
        p_ids = release_values(p_flat, pixels, p_where)
        t_vals, t_offsets, lost_t = _binary_release(t_ids)
        p_vals, p_offsets, lost_p = _binary_release(p_ids)
        ti, t_unique, _ = compact(t_vals)
        pi, p_unique, _ = compact(p_vals)
        # A key lies in (offset[c], offset[c] + max id of c]: its nucleus's label is c + 1.
        cls_t = np.searchsorted(t_offsets, t_unique, side="right")
        cls_p = np.searchsorted(p_offsets, p_unique, side="right")
        overrides = {}
        for c in range(NUM_NUCLEUS_CLASSES):
            if lost_t[c] or lost_p[c]:
                # Some of this class channel's pixels lost to a later channel: score the channel as it is.
                overrides[c + 1] = pq_counts(t_ids[c], p_ids[c])
        coords = _coords(pixels, shape[1])
        scores = score_image(ti, cls_t, pi, cls_p, coords, self.num_classes, self.radius, overrides or None)
        return self._record(scores, tissue, index)

    # ----------------------------------------------------------------------------------------
    # Results
    # ----------------------------------------------------------------------------------------

    def image_table(self) -> list[dict[str, Any]]:
        """One dict per image, by index: ``index``, ``tissue``, ``bPQ``, ``bDQ``, ``bSQ``, ``mPQ``, ``PQ_<class>`` ..."""
        names = {i: name for name, i in self._tissues.items()}
        table = [
            {"index": index, "tissue": names[t], **self._row_dict(row)}
            for row, t, index in zip(self._rows, self._tissue_of_row, self._indices)
        ]
        return sorted(table, key=lambda row: row["index"])

    def compute(self) -> dict[str, Any]:
        """The set's scores.

        Returns:
            Floats (fractions in [0, 1], NaN where undefined): ``mPQ``, ``bPQ`` (tissue-averaged,
            the headline), ``mPQ_image``, ``bPQ_image`` (image-averaged), ``DQ``, ``SQ`` (binary,
            tissue-averaged like bPQ), ``PQ_<class>``, ``DQ_<class>``, ``SQ_<class>`` (image
            averages), ``F1_detection``, ``precision_detection``, ``recall_detection``,
            ``F1_<class>`` (pooled counts; absent when ``radius`` is ``None``), ``num_images``,
            ``num_tissues``; and ``per_tissue``: ``{tissue: {"images", "mPQ", "bPQ", "DQ", "SQ"}}``,
            ``counts``: the pooled F1 counts.
        """
        n = self.num_images
        rows = np.stack(self._rows) if n else np.zeros((0, 3 + 3 * self.num_classes))
        tissue_of_row = np.asarray(self._tissue_of_row, dtype=np.int64)
        classes = rows[:, 3:].reshape(n, self.num_classes, 3)
        image_mpq = _nanmean(classes[:, :, 0], axis=1) if n else np.zeros(0)
        per_tissue: dict[str, dict[str, float]] = {}
        for name, t in sorted(self._tissues.items(), key=lambda item: item[0]):
            mine = tissue_of_row == t
            per_tissue[name] = {
                "images": int(mine.sum()),
                "mPQ": float(_nanmean(image_mpq[mine])),
                "bPQ": float(_nanmean(rows[mine, 0])),
                "DQ": float(_nanmean(rows[mine, 1])),
                "SQ": float(_nanmean(rows[mine, 2])),
            }

        def over_tissues(key: str) -> float:
            return (
                float(_nanmean(np.array([v[key] for v in per_tissue.values()]))) if per_tissue else math.nan
            )

        out: dict[str, Any] = {
            "mPQ": over_tissues("mPQ"),
            "bPQ": over_tissues("bPQ"),
            "mPQ_image": float(_nanmean(image_mpq)) if n else math.nan,
            "bPQ_image": float(_nanmean(rows[:, 0])) if n else math.nan,
            "DQ": over_tissues("DQ"),
            "SQ": over_tissues("SQ"),
        }
        for c, name in enumerate(self.class_names):
            for j, kind in enumerate(("PQ", "DQ", "SQ")):
                out[f"{kind}_{name}"] = float(_nanmean(classes[:, c, j])) if n else math.nan
        if self.radius is not None:
            tp, fp, fn = (int(v) for v in self.detection)
            out["F1_detection"] = _f1(tp, fp, fn)
            out["precision_detection"] = tp / (tp + fp) if tp + fp else math.nan
            out["recall_detection"] = tp / (tp + fn) if tp + fn else math.nan
            for name, (tp_c, fp_c, fn_c, fpd, fnd) in zip(self.class_names, self.per_class.tolist()):
                denominator = 2 * tp_c + 2 * fp_c + 2 * fn_c + fpd + fnd
                out[f"F1_{name}"] = 2 * tp_c / denominator if denominator else math.nan
        out["num_images"] = n
        out["num_tissues"] = len(per_tissue)
        out["per_tissue"] = per_tissue
        out["counts"] = {
            "detection": dict(zip(("TP", "FP", "FN"), (int(v) for v in self.detection))),
            "per_class": {
                name: dict(zip(("TP", "FP", "FN", "FP_d", "FN_d"), (int(v) for v in row)))
                for name, row in zip(self.class_names, self.per_class)
            },
        }
        return out


def _coords(pixels: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) float coordinates of flat pixel indices."""
    y, x = np.divmod(pixels, width)
    return y.astype(np.float64), x.astype(np.float64)


def _binary_release(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """The binary map of release ids on a set of pixels: one key per (channel, id).

    Every (channel, id) is one nucleus, later channels winning shared pixels (the official
    ``binarize``, and the dataset's ``instance_mask``).

    Args:
        ids: (5, n) ids (row c: channel c) of a set of pixels holding every nucleus pixel.

    Returns:
        ``(keys, offsets, lost)``: each pixel's key ``id + offsets[c]`` of its winning channel c
        (0 where no channel claims it; keys of channel c lie in ``(offsets[c], offsets[c] + max id
        of c]``), the offsets, and per channel whether a later channel overwrote some of its pixels.
    """
    channels, n = ids.shape
    tops = ids.max(axis=1) if n else np.zeros(channels, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(tops + 1)[:-1]]).astype(np.int64)
    keys = np.zeros(n, dtype=np.int64)
    claims = 0
    for c in range(channels):  # later channels overwrite (win)
        if tops[c]:
            mine = ids[c] > 0
            claims += int(np.count_nonzero(mine))
            keys = np.where(mine, ids[c] + offsets[c], keys)
    lost = [False] * channels
    if claims > np.count_nonzero(keys):  # a pixel claimed by two channels: which channels lost pixels?
        winner = np.searchsorted(offsets, keys, side="right") - 1
        for c in range(channels):
            lost[c] = bool(np.any((ids[c] > 0) & (winner != c)))
    return keys, offsets, lost


def make_instance_compute_metrics(
    to_instances: Callable[[Any, Any], Iterable[tuple[Any, ...]]],
    radius: float | None = 12.0,
    num_classes: int = NUM_NUCLEUS_CLASSES,
    prefix: str = "",
) -> Callable[..., dict[str, float]]:
    """A Trainer ``compute_metrics(eval_pred, compute_result)`` that accumulates nucleus-level scores.

    Args:
        to_instances: ``to_instances(predictions, label_ids)`` for one batch -> an iterable of
            ``(true_instances, true_classes, pred_instances, pred_classes, tissue)`` tuples, one
            per image (e.g. the image processor's ``post_process_instance_segmentation`` on the
            predictions, and the batch's ``instance_mask`` / ``instance_labels`` on the labels side).
        radius: F1 pairing radius (``None``: no F1).
        num_classes: nucleus classes.
        prefix: prepended to every key (e.g. ``"nuclei_"``).

    Returns:
        A callable that returns ``{}`` for intermediate batches and, when ``compute_result`` is
        true, the flat float results of :func:`flatten_instance_metrics` (then resets itself).
        It works with ``TrainingArguments(batch_eval_metrics=True)`` and also with one call on the
        whole set.
    """
    metric = PanNukeInstanceMetrics(num_classes=num_classes, radius=radius)

    def compute_metrics(eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        if isinstance(eval_pred, (tuple, list)):
            predictions, labels = eval_pred[0], eval_pred[1]
        else:
            predictions, labels = eval_pred.predictions, eval_pred.label_ids
        for item in to_instances(predictions, labels):
            metric.update(*item)
        if not compute_result:
            return {}
        try:
            return {f"{prefix}{k}": v for k, v in flatten_instance_metrics(metric.compute()).items()}
        finally:
            metric.reset()

    compute_metrics.metric = metric  # type: ignore[attr-defined]
    return compute_metrics


def flatten_instance_metrics(results: Mapping[str, Any], per_tissue: bool = False) -> dict[str, float]:
    """Loggable floats of :meth:`PanNukeInstanceMetrics.compute` (drops the nested tables).

    Args:
        results: the computed dict.
        per_tissue: also add ``mPQ_<tissue>`` / ``bPQ_<tissue>`` keys.
    """
    flat = {k: float(v) for k, v in results.items() if isinstance(v, (int, float, np.floating, np.integer))}
    if per_tissue:
        for tissue, row in results.get("per_tissue", {}).items():
            flat[f"mPQ_{tissue}"] = float(row["mPQ"])
            flat[f"bPQ_{tissue}"] = float(row["bPQ"])
    return flat


__all__ = [
    "NO_TISSUE",
    "PQCounts",
    "PanNukeInstanceMetrics",
    "flatten_instance_metrics",
    "make_instance_compute_metrics",
]
