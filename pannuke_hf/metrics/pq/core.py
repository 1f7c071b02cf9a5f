"""The per-image computation of PanNuke's nucleus-level scores (numpy; scipy for the F1 matching).

The protocol (PanNuke's official evaluation; HoVer-Net's detection F1), stated once:

* **PQ of two instance maps.** A (true, predicted) pair of nuclei matches when their IoU is
  strictly above 0.5 (then the match is unique: no solver needed). TP = matched pairs,
  FP = unmatched predicted nuclei, FN = unmatched true nuclei; DQ = TP / (TP + FP/2 + FN/2),
  SQ = (sum of the matched IoUs) / (TP + 1e-6) (the official epsilon, kept so numbers compare),
  PQ = DQ x SQ. A nucleus is a set of pixels: ids need not be contiguous (they are made so first)
  and a nucleus may come in several pieces.
* **Per image.** bPQ on the binary map, where every (class channel, id) is its own nucleus and later
  channels win shared pixels; NaN when the truth has no nucleus. Class PQ for each of the 5 classes
  on that class's nuclei only (in the release form, on that class channel as it is); NaN when the
  truth has no nucleus of the class (predicted nuclei of an absent class are then ignored), 0 when
  it has some and the prediction none. Image mPQ = nan-mean of the 5 class PQs.
* **Detection / classification F1** (HoVer-Net): nuclei (of the binary map) are reduced to their
  centroids, paired one to one by an assignment minimising the total distance
  (``scipy.optimize.linear_sum_assignment`` over all pairs), and pairs farther apart than the radius
  (12 px at 40x) are dropped. Per class c, over the pairs in which the truth or the prediction is
  c: TP_c both c, FP_c only the prediction c, FN_c only the truth c; FP_d,c / FN_d,c are the
  unpaired predicted / true nuclei of class c. Counts are pooled over the whole set by the caller
  (:class:`~pannuke_hf.metrics.pq.PanNukeInstanceMetrics`).

The fast computation: ids of both maps are made contiguous (a lookup table, or ``np.unique`` for
huge ids), one joint histogram of (true, predicted) index pairs gives every intersection, and the
pair IoUs follow from the areas. The binary map's histogram also serves every class (a class's
nuclei are the same pixel sets), except in the rare release-format images where a class channel
has pixels overwritten by a later channel: that class is then computed from its own channel, as the
official code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: IoU a pair of nuclei must exceed (strictly) to match.
IOU_THRESHOLD: float = 0.5
#: The official code's epsilon in SQ = sum IoU / (TP + eps).
SQ_EPSILON: float = 1e-6

#: Largest id for which a lookup table (rather than ``np.unique``) makes ids contiguous.
_LUT_MIN: int = 1 << 16


@dataclass
class PQCounts:
    """Matching counts of two instance maps.

    Attributes:
        tp, fp, fn: matched pairs, unmatched predicted nuclei, unmatched true nuclei.
        iou_sum: sum of the matched pairs' IoU.
        num_true, num_pred: nuclei in each map.
    """

    tp: int
    fp: int
    fn: int
    iou_sum: float
    num_true: int
    num_pred: int

    def scores(self) -> tuple[float, float, float]:
        """``(PQ, DQ, SQ)``; all NaN when the truth has no nucleus, 0 when the prediction has none."""
        return pq_scores(self.tp, self.fp, self.fn, self.iou_sum, self.num_true)


def pq_scores(tp: int, fp: int, fn: int, iou_sum: float, num_true: int) -> tuple[float, float, float]:
    """``(PQ, DQ, SQ)`` from matching counts (NaN triple when ``num_true == 0``)."""
    if num_true == 0:
        return (np.nan, np.nan, np.nan)
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + SQ_EPSILON)
    return (dq * sq, dq, sq)


def compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make non-negative ids contiguous.

    Args:
        values: flat int64 ids >= 0 (0 = none).

    Returns:
        ``(index, ids, areas)``: ``index`` (same length, intp) is 0 where ``values`` is 0 and
        1..n (in increasing id order) elsewhere; ``ids`` the n distinct non-zero ids, sorted;
        ``areas`` their pixel counts.
    """
    n = values.size
    top = int(values.max()) if n else 0
    if top <= max(4 * n, _LUT_MIN):
        counts = np.bincount(values, minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, len(ids) + 1)
        return lut[values], ids, counts[ids]
    ids, inverse, areas = np.unique(values, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1).astype(np.intp)
    if ids[0] == 0:
        return inverse, ids[1:], areas[1:]
    return inverse + 1, ids, areas


@dataclass
class Overlaps:
    """The overlapping (true, predicted) pairs of two compacted instance maps.

    Attributes:
        true_index, pred_index: (P,) 0-based nucleus indices of each overlapping pair.
        intersection: (P,) shared pixels.
        true_area, pred_area: (nT,), (nP,) pixel counts.
        true_sums, pred_sums: (nT, 2), (nP, 2) sums of the (y, x) pixel coordinates (centroids
            = sums / areas), or ``None`` when not asked for.
    """

    true_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    true_sums: np.ndarray | None = None
    pred_sums: np.ndarray | None = None

    def ious(self) -> np.ndarray:
        """IoU of each overlapping pair."""
        union = self.true_area[self.true_index] + self.pred_area[self.pred_index] - self.intersection
        return self.intersection / union

    def centroids(self) -> tuple[np.ndarray, np.ndarray]:
        """(nT, 2), (nP, 2) centroids as (y, x)."""
        return (
            self.true_sums / self.true_area[:, None],
            self.pred_sums / self.pred_area[:, None],
        )


def align(
    size: int, true_pixels: np.ndarray, true_ids: np.ndarray, pred_pixels: np.ndarray, pred_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put two sparse maps (flat pixel indices + ids) on their common pixels.

    Returns:
        ``(pixels, true, pred)``: the sorted union of both pixel sets, and each map's ids there
        (0 where that map has no nucleus).
    """
    mask = np.zeros(size, dtype=bool)
    mask[true_pixels] = True
    mask[pred_pixels] = True
    pixels = np.flatnonzero(mask)
    true = np.zeros(len(pixels), dtype=np.int64)
    pred = np.zeros(len(pixels), dtype=np.int64)
    true[np.searchsorted(pixels, true_pixels)] = true_ids
    pred[np.searchsorted(pixels, pred_pixels)] = pred_ids
    return pixels, true, pred


def overlaps(
    true_index: np.ndarray,
    num_true: int,
    pred_index: np.ndarray,
    num_pred: int,
    coords: tuple[np.ndarray, np.ndarray] | None = None,
) -> Overlaps:
    """Intersections (and, with ``coords``, coordinate sums) of two compacted instance maps.

    Args:
        true_index, pred_index: compacted maps (0 = none, 1..n) over the same pixels (all of the
            image's, or any subset holding every nucleus pixel of both).
        num_true, num_pred: n of each.
        coords: (y, x) float coordinates of those pixels: also compute the sums for centroids.

    Returns:
        The :class:`Overlaps`.
    """
    width = num_pred + 1
    cells = (num_true + 1) * width
    if cells <= max(4 * true_index.size, _LUT_MIN):
        # Small enough for a dense joint histogram (the usual case: tens of nuclei).
        joint = true_index * width + pred_index
        table = np.bincount(joint, minlength=cells).reshape(num_true + 1, width)
        true_area = table[1:].sum(axis=1)
        pred_area = table[:, 1:].sum(axis=0)
        ti, pj = np.nonzero(table[1:, 1:])
        inter = table[1:, 1:][ti, pj]
        sums_t = sums_p = None
        if coords is not None:
            yy, xx = coords
            sy = np.bincount(joint, weights=yy, minlength=cells).reshape(num_true + 1, width)
            sx = np.bincount(joint, weights=xx, minlength=cells).reshape(num_true + 1, width)
            sums_t = np.stack([sy[1:].sum(axis=1), sx[1:].sum(axis=1)], axis=1)
            sums_p = np.stack([sy[:, 1:].sum(axis=0), sx[:, 1:].sum(axis=0)], axis=1)
        return Overlaps(ti, pj, inter, true_area, pred_area, sums_t, sums_p)
    # Many nuclei: a sparse table of the pixels where both maps have a nucleus.
    true_area = np.bincount(true_index, minlength=num_true + 1)[1:]
    pred_area = np.bincount(pred_index, minlength=num_pred + 1)[1:]
    both = (true_index > 0) & (pred_index > 0)
    joint = true_index[both].astype(np.int64) * width + pred_index[both]
    codes, inter = np.unique(joint, return_counts=True)
    ti, pj = codes // width - 1, codes % width - 1
    sums_t = sums_p = None
    if coords is not None:
        yy, xx = coords
        sums_t = np.stack(
            [np.bincount(true_index, weights=w, minlength=num_true + 1)[1:] for w in (yy, xx)], axis=1
        )
        sums_p = np.stack(
            [np.bincount(pred_index, weights=w, minlength=num_pred + 1)[1:] for w in (yy, xx)], axis=1
        )
    return Overlaps(ti.astype(np.intp), pj.astype(np.intp), inter, true_area, pred_area, sums_t, sums_p)


def match(ov: Overlaps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The matched pairs (IoU > 0.5): ``(true_index, pred_index, iou)``."""
    iou = ov.ious()
    keep = iou > IOU_THRESHOLD
    return ov.true_index[keep], ov.pred_index[keep], iou[keep]


def pq_counts(true_map: np.ndarray, pred_map: np.ndarray) -> PQCounts:
    """Matching counts of two instance maps (validated int64 arrays of one shape, 0 = none; or
    both maps' ids on a common subset of pixels holding all their nuclei, as :func:`align` gives)."""
    t, ids_t, _ = compact(true_map.reshape(-1))
    p, ids_p, _ = compact(pred_map.reshape(-1))
    ov = overlaps(t, len(ids_t), p, len(ids_p))
    _, _, iou = match(ov)
    tp = len(iou)
    return PQCounts(tp, len(ids_p) - tp, len(ids_t) - tp, float(iou.sum()), len(ids_t), len(ids_p))


def pair_centroids(
    true_centroids: np.ndarray, pred_centroids: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """HoVer-Net's centroid pairing: a minimum-total-distance assignment, then pairs within ``radius``.

    Args:
        true_centroids, pred_centroids: (nT, 2), (nP, 2) coordinates.
        radius: largest distance of a kept pair (inclusive).

    Returns:
        ``(true_index, pred_index)`` of the kept pairs.
    """
    if len(true_centroids) == 0 or len(pred_centroids) == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    from scipy.optimize import linear_sum_assignment

    diff = true_centroids[:, None, :] - pred_centroids[None, :, :]
    distance = np.sqrt((diff**2).sum(axis=2))
    rows, cols = linear_sum_assignment(distance)
    keep = distance[rows, cols] <= radius
    return rows[keep], cols[keep]


def f1_counts(
    true_classes: np.ndarray,
    pred_classes: np.ndarray,
    true_index: np.ndarray,
    pred_index: np.ndarray,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Detection and per-class counts of one image from its centroid pairs.

    Args:
        true_classes, pred_classes: (nT,), (nP,) labels 1..num_classes of each nucleus.
        true_index, pred_index: the paired nuclei.
        num_classes: number of classes.

    Returns:
        ``(detection, per_class)``: ``[TP, FP, FN]`` and a (num_classes, 5) array of
        ``[TP_c, FP_c, FN_c, FP_d,c, FN_d,c]`` per class (row c-1).
    """
    tp = len(true_index)
    detection = np.array([tp, len(pred_classes) - tp, len(true_classes) - tp], dtype=np.int64)
    paired_t = true_classes[true_index]
    paired_p = pred_classes[pred_index]
    unpaired_t = np.delete(true_classes, true_index)
    unpaired_p = np.delete(pred_classes, pred_index)
    same = paired_t == paired_p
    bins = num_classes + 1
    per_class = np.stack(
        [
            np.bincount(paired_t[same], minlength=bins),  # TP_c: both c
            np.bincount(paired_p[~same], minlength=bins),  # FP_c: predicted c, true another
            np.bincount(paired_t[~same], minlength=bins),  # FN_c: true c, predicted another
            np.bincount(unpaired_p, minlength=bins),  # FP_d,c
            np.bincount(unpaired_t, minlength=bins),  # FN_d,c
        ],
        axis=1,
    )[1:bins]
    return detection, per_class.astype(np.int64)


@dataclass
class ImageScores:
    """The numbers one image contributes.

    Attributes:
        binary: ``(PQ, DQ, SQ)`` of the binary maps.
        classes: (num_classes, 3) ``(PQ, DQ, SQ)`` per class (NaN rows for absent classes).
        detection: ``[TP, FP, FN]`` of the centroid pairing (zeros without a radius).
        per_class: (num_classes, 5) ``[TP_c, FP_c, FN_c, FP_d,c, FN_d,c]``.
    """

    binary: tuple[float, float, float]
    classes: np.ndarray
    detection: np.ndarray
    per_class: np.ndarray

    @property
    def mpq(self) -> float:
        """Image mPQ: nan-mean of the class PQs (NaN when the truth has no nucleus)."""
        pqs = self.classes[:, 0]
        return float(np.nanmean(pqs)) if not np.isnan(pqs).all() else np.nan


def score_image(
    true_index: np.ndarray,
    true_classes: np.ndarray,
    pred_index: np.ndarray,
    pred_classes: np.ndarray,
    coords: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    radius: float | None,
    class_overrides: dict[int, PQCounts] | None = None,
) -> ImageScores:
    """All per-image numbers from two compacted binary maps and their nuclei's classes.

    Args:
        true_index, pred_index: compacted maps (0 = none, k = nucleus k) over the same pixels
            (see :func:`overlaps`).
        true_classes, pred_classes: (nT,), (nP,) labels 1..num_classes of nuclei 1..n.
        coords: (y, x) coordinates of those pixels.
        num_classes: number of classes.
        radius: centroid pairing radius of the F1 counts; ``None`` skips them.
        class_overrides: class -> counts computed from its own channel (release-format images
            whose class channel lost pixels to a later channel).
    """
    ov = overlaps(true_index, len(true_classes), pred_index, len(pred_classes), coords if radius else None)
    mt, mp, iou = match(ov)
    tp = len(iou)
    binary = pq_scores(
        tp, len(pred_classes) - tp, len(true_classes) - tp, float(iou.sum()), len(true_classes)
    )
    # Class c: its nuclei are the same pixel sets, so its matches are the binary matches whose
    # true and predicted nuclei are both c.
    bins = num_classes + 1
    matched_class = np.where(true_classes[mt] == pred_classes[mp], true_classes[mt], 0)
    tp_c = np.bincount(matched_class, minlength=bins).tolist()
    iou_c = np.bincount(matched_class, weights=iou, minlength=bins).tolist()
    n_t = np.bincount(true_classes, minlength=bins).tolist()
    n_p = np.bincount(pred_classes, minlength=bins).tolist()
    classes = np.empty((num_classes, 3))
    for c in range(1, bins):
        if class_overrides and c in class_overrides:
            classes[c - 1] = class_overrides[c].scores()
        else:
            classes[c - 1] = pq_scores(tp_c[c], n_p[c] - tp_c[c], n_t[c] - tp_c[c], iou_c[c], n_t[c])
    if radius is None:
        detection, per_class = np.zeros(3, dtype=np.int64), np.zeros((num_classes, 5), dtype=np.int64)
    else:
        ct, cp = ov.centroids()
        pt, pp = pair_centroids(ct, cp, radius)
        detection, per_class = f1_counts(true_classes, pred_classes, pt, pp, num_classes)
    return ImageScores(binary, classes, detection, per_class)
