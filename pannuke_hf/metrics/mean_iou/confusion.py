# Copyright 2026 The pannuke-hf authors. Licensed under the Apache License, Version 2.0.
"""Mean IoU + Dice for semantic segmentation, with the exact semantics of the Hub ``mean_iou`` metric.

Only numpy and torch are needed here (no ``evaluate``), so the Trainer glue stays light to import;
``mean_iou.py`` beside this file wraps it as an ``evaluate`` metric. It holds:

* :class:`SegmentationConfusionMatrix`: a streaming accumulator (``update`` per batch, ``compute``
  once) that keeps one small integer matrix on the predictions' device, so memory does not depend
  on the number of evaluated images. This is what the Trainer glue uses.
* :func:`mean_iou`: a one-shot function over lists of maps.
* :func:`metrics_from_areas`, :func:`remap_references`: the building blocks.

Semantics (identical to the Hub ``mean_iou``, areas summed over the whole evaluation set):

1. ``label_map`` then ``reduce_labels`` are applied to the references only.
2. Pixels whose reference equals ``ignore_index`` are dropped.
3. Over the remaining pixels, a class's *label area* counts references equal to it, its
   *prediction area* counts predictions equal to it (wherever the reference is not ignored, even
   where the reference is outside ``[0, num_labels - 1]``), and its *intersection* counts pixels
   where both equal it. Values outside ``[0, num_labels - 1]`` fall in no class.
4. ``IoU = intersect / union``, ``accuracy = intersect / label area``,
   ``Dice = 2 * intersect / (prediction area + label area)``, ``overall_accuracy = sum(intersect) /
   sum(label area)``; classes with a zero denominator are NaN and skipped by the means.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

#: The value ``reduce_labels`` turns reference 0 into, as the Hub metric does (fixed, whatever
#: ``ignore_index`` is).
REDUCE_LABELS_BACKGROUND = 255

# Largest num_labels for the 8-bit CPU fast path: its bin index, ref * (num_labels + 1) + pred,
# must fit an int16.
_FAST_PATH_MAX_LABELS = 127


# ------------------------------------------------------------------------------------------------
# Input normalisation
# ------------------------------------------------------------------------------------------------


def _to_int_tensor(x: Any, what: str, index: int) -> torch.Tensor:
    """Convert one map or batch (torch, numpy, nested lists, PIL) to an integer tensor.

    Bool becomes uint8; unsigned types wider than 8 bits become signed ones wide enough to hold
    them; floating maps must hold whole, finite numbers. ``what``/``index`` name the input in errors.
    """
    if not isinstance(x, torch.Tensor):
        array = np.asarray(x)
        if array.dtype == np.uint16:
            array = array.astype(np.int32)
        elif array.dtype == np.uint32:
            array = array.astype(np.int64)
        elif array.dtype == np.uint64:
            # Anything past int64 is out of range either way; clipping keeps it out of range.
            array = np.minimum(array, np.iinfo(np.int64).max).astype(np.int64)
        elif array.dtype.kind not in "biuf":
            raise TypeError(f"{what} {index}: expected an integer map, got dtype {array.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(array))
    if x.dtype == torch.bool:
        return x.to(torch.uint8)
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        return x.to(torch.int64)
    if x.is_floating_point():
        bad = ~torch.isfinite(x) | (x != torch.round(x))
        if bool(bad.any()):
            raise ValueError(
                f"{what} {index}: expected integer class ids, got {x.dtype} values that are not whole "
                f"finite numbers (e.g. {x[bad].flatten()[0].item()})"
            )
        return x.to(torch.int64)
    if x.is_complex() or not _is_integer_dtype(x.dtype):
        raise TypeError(f"{what} {index}: expected an integer map, got dtype {x.dtype}")
    return x


def _is_integer_dtype(dtype: torch.dtype) -> bool:
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


def _iter_pairs(predictions: Any, references: Any) -> Iterator[tuple[Any, Any]]:
    """Yield ``(prediction, reference)`` per array or per list item.

    An array/tensor is one batch ((H, W) or (B, H, W)); a list or tuple is a sequence of maps that
    may differ in size, each handled on its own.
    """
    if isinstance(predictions, (list, tuple)) or isinstance(references, (list, tuple)):
        predictions = list(predictions)
        references = list(references)
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} references")
        yield from zip(predictions, references)
    else:
        yield predictions, references


# ------------------------------------------------------------------------------------------------
# Reference remapping (label_map, reduce_labels), exactly as the Hub metric
# ------------------------------------------------------------------------------------------------


def _check_label_map(label_map: Mapping[int, int] | None) -> dict[int, int] | None:
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise TypeError(f"label_map must be a dict of int -> int, got {type(label_map).__name__}")
    checked = {}
    for old_id, new_id in label_map.items():
        try:
            checked[operator.index(old_id)] = operator.index(new_id)
        except TypeError:
            raise TypeError(f"label_map must map int -> int, got {old_id!r}: {new_id!r}") from None
    return checked


def remap_references(
    references: torch.Tensor, label_map: Mapping[int, int] | None = None, reduce_labels: bool = False
) -> torch.Tensor:
    """Apply ``label_map`` then ``reduce_labels`` to reference ids, as the Hub ``mean_iou`` does.

    Args:
        references: integer tensor of any shape (not modified).
        label_map: old id -> new id, applied one entry after the other in the dict's order (an
            entry sees the output of the previous ones, so ``{1: 2, 2: 3}`` sends 1 to 3).
        reduce_labels: 0 becomes 255, every other id is lowered by 1, and 254 (an original 255)
            becomes 255 again.

    Returns:
        An int64 tensor of the same shape (the input itself when nothing is to be done).
    """
    label_map = _check_label_map(label_map)
    if not label_map and not reduce_labels:
        return references
    out = references.to(torch.int64, copy=True)
    for old_id, new_id in (label_map or {}).items():
        out[out == old_id] = new_id
    if reduce_labels:
        out[out == 0] = REDUCE_LABELS_BACKGROUND
        out -= 1
        out[out == REDUCE_LABELS_BACKGROUND - 1] = REDUCE_LABELS_BACKGROUND
    return out


# ------------------------------------------------------------------------------------------------
# Areas -> metrics
# ------------------------------------------------------------------------------------------------


def metrics_from_areas(
    area_intersect: np.ndarray,
    area_union: np.ndarray,
    area_pred_label: np.ndarray,
    area_label: np.ndarray,
    nan_to_num: float | None = None,
) -> dict[str, Any]:
    """Turn per-class areas summed over a dataset into the metric dict.

    Args:
        area_intersect, area_union, area_pred_label, area_label: float64 arrays of shape
            (num_labels,), the Hub's ``total_area_*`` values.
        nan_to_num: if given, NaN values are replaced by it.

    Returns:
        ``mean_iou``, ``mean_accuracy``, ``overall_accuracy`` (numpy float64),
        ``per_category_iou``, ``per_category_accuracy`` (float64 arrays), as the Hub metric, then
        ``mean_dice`` and ``per_category_dice``. A class with a zero denominator is NaN and is
        skipped by the means; a mean over no class is NaN.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        overall_accuracy = area_intersect.sum() / area_label.sum()
        iou = area_intersect / area_union
        accuracy = area_intersect / area_label
        dice = 2 * area_intersect / (area_pred_label + area_label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" when all NaN
        metrics = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(accuracy),
            "overall_accuracy": overall_accuracy,
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
            "mean_dice": np.nanmean(dice),
            "per_category_dice": dice,
        }
    if nan_to_num is not None:
        metrics = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in metrics.items()}
    return metrics


# ------------------------------------------------------------------------------------------------
# The streaming accumulator
# ------------------------------------------------------------------------------------------------


class SegmentationConfusionMatrix:
    """Streaming confusion matrix giving the Hub ``mean_iou`` outputs plus Dice.

    Feed it batch by batch with :meth:`update`, read the metrics once with :meth:`compute`. The
    state is a ``(num_labels + 2, num_labels + 2)`` int64 tensor on the device of the first
    predictions (or ``device``): rows are reference codes, columns prediction codes, code 0 is
    "below 0", codes ``1..num_labels`` the classes, code ``num_labels + 1`` "num_labels or above";
    pixels whose reference is ``ignore_index`` are not counted. Memory is therefore constant in the
    number of images, and no map leaves the device: only :meth:`compute` copies the small matrix to
    the host (on CUDA, ``torch.bincount`` itself reads each batch's maximum, a one-number sync).

    Args:
        num_labels: number of classes (ids ``0..num_labels - 1``).
        ignore_index: reference value left out of every area (``None``: nothing ignored).
        label_map: old reference id -> new id, applied in the dict's order (see
            :func:`remap_references`).
        reduce_labels: lower reference ids by one, 0 -> 255 (see :func:`remap_references`).
        device: where the state lives; default: the device of the first predictions.
        fast_path: on the CPU, count through an 8-bit/16-bit path when all values lie in
            ``[0, 255]`` (same counts, several times faster). ``False`` forces the general path
            (the one used on accelerators).

    Distributed use: the accumulator counts exactly what it is given. Under DDP, Trainer gathers
    every batch from all processes before calling ``compute_metrics`` (dropping the samples the
    sampler duplicated), so each process sees the whole evaluation set once and every process
    computes the same result. Outside Trainer, either gather the maps yourself or sum the
    accumulators with :meth:`merge` (or an all-reduce of :attr:`counts`).

    Example:
        >>> cm = SegmentationConfusionMatrix(num_labels=6, ignore_index=255)
        >>> for batch in loader:  # doctest: +SKIP
        ...     cm.update(model(batch["pixel_values"]).logits.argmax(1), batch["labels"])
        >>> cm.compute()["mean_iou"]  # doctest: +SKIP
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = 255,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
        device: str | torch.device | None = None,
        fast_path: bool = True,
    ) -> None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1:
            raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        ):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.num_labels = int(num_labels)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.label_map = _check_label_map(label_map)
        self.reduce_labels = bool(reduce_labels)
        self.fast_path = fast_path
        self._device = None if device is None else torch.device(device)
        self.counts: torch.Tensor | None = None
        #: Number of 2-D maps counted since the last reset.
        self.num_maps = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device | None:
        """Device of the state (``None`` until the first update when no device was given)."""
        return self._device

    def reset(self) -> None:
        """Forget everything counted so far (the device is kept)."""
        self.counts = None
        self.num_maps = 0

    def _state(self, device: torch.device) -> torch.Tensor:
        if self._device is None:
            self._device = device
        if self.counts is None:
            size = self.num_labels + 2
            self.counts = torch.zeros((size, size), dtype=torch.int64, device=self._device)
        return self.counts

    def merge(self, other: SegmentationConfusionMatrix) -> SegmentationConfusionMatrix:
        """Add the counts of another accumulator with the same settings (e.g. from another process).

        Returns:
            ``self``.
        """
        settings = ("num_labels", "ignore_index", "label_map", "reduce_labels")
        for name in settings:
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"cannot merge accumulators with different {name}")
        if other.counts is not None:
            state = self._state(other.counts.device)
            state += other.counts.to(state.device)
        self.num_maps += other.num_maps
        return self

    # -- counting ------------------------------------------------------------------------------

    def update(self, predictions: Any, references: Any) -> None:
        """Count one batch.

        Args:
            predictions: predicted class ids, shape (H, W) or (B, H, W), as a torch tensor (any
                device), numpy array or nested lists; or a list/tuple of (H, W) maps that may
                differ in size. Integer (or bool) values; whole-valued floats are accepted.
            references: ground-truth ids in the same layout and shapes as ``predictions``.

        Raises:
            ValueError: shapes differ, a map is not 2-D, or a float map holds non-integer values.
                The message names the map's index (counted from the first update since reset).
            TypeError: a map is not numeric.
        """
        # Validate every map before counting any, so a bad map leaves the state untouched.
        pairs = []
        index = self.num_maps
        for prediction, reference in _iter_pairs(predictions, references):
            prediction = _to_int_tensor(prediction, "prediction", index)
            reference = _to_int_tensor(reference, "reference", index)
            if prediction.shape != reference.shape:
                raise ValueError(
                    f"map {index}: prediction shape {tuple(prediction.shape)} differs from reference "
                    f"shape {tuple(reference.shape)}"
                )
            if prediction.dim() not in (2, 3):
                raise ValueError(
                    f"map {index}: expected (H, W) or (B, H, W) maps, got shape {tuple(prediction.shape)}"
                )
            pairs.append((prediction, reference))
            index += 1 if prediction.dim() == 2 else prediction.shape[0]
        for prediction, reference in pairs:
            state = self._state(prediction.device)
            prediction = prediction.to(state.device, non_blocking=True)
            reference = reference.to(state.device, non_blocking=True)
            self._count(prediction, reference, state)
            self.num_maps += 1 if prediction.dim() == 2 else prediction.shape[0]

    def _count(self, prediction: torch.Tensor, reference: torch.Tensor, state: torch.Tensor) -> None:
        reference = remap_references(reference, self.label_map, self.reduce_labels)
        if prediction.numel() == 0:
            return
        if self.fast_path and state.device.type == "cpu" and self.num_labels <= _FAST_PATH_MAX_LABELS:
            prediction_u8 = _as_uint8_if_fits(prediction)
            reference_u8 = _as_uint8_if_fits(reference)
            if prediction_u8 is not None and reference_u8 is not None:
                self._count_uint8(prediction_u8, reference_u8, state)
                return
        self._count_general(prediction, reference, state)

    def _count_general(self, prediction: torch.Tensor, reference: torch.Tensor, state: torch.Tensor) -> None:
        """Any integer values, any device: clamp both to codes 0..n+1, drop ignored, bincount."""
        n = self.num_labels
        size = n + 2
        # clamp() is out of place, so the caller's tensors are never modified.
        reference_codes = reference.to(torch.int64).clamp(-1, n).add_(1)
        prediction_codes = prediction.to(torch.int64).clamp(-1, n).add_(1)
        bins = reference_codes.mul_(size).add_(prediction_codes)
        if self.ignore_index is not None:
            ignored = _equals(reference, self.ignore_index)
            if ignored is not None:
                bins.masked_fill_(ignored, size * size)  # one extra bin, dropped below
        histogram = torch.bincount(bins.reshape(-1), minlength=size * size + 1)
        state += histogram[: size * size].view(size, size)

    def _count_uint8(self, prediction: torch.Tensor, reference: torch.Tensor, state: torch.Tensor) -> None:
        """CPU fast path for values in [0, 255], single-byte arithmetic where possible.

        Prediction codes are ``min(value, n)`` (n = "n or above"). The reference is coded so that no
        separate mask pass is needed: with ``ignore_index`` 255 (or none in [0, 255]) in 8 bits,
        code 0 = ignored, 1..n = classes, n + 1 = "n or above"; otherwise through a 16-bit
        (256, n + 1) histogram over (reference value, prediction code) whose ignored row is dropped.
        """
        n = self.num_labels
        prediction_codes = prediction.clamp(max=n)
        ignore = self.ignore_index
        ignore_in_byte = ignore is not None and 0 <= ignore <= 255
        if (n + 2) * (n + 1) <= 256 and (ignore == 255 or not ignore_in_byte):
            if ignore == 255:
                # uint8 arithmetic wraps: 255 + 1 == 0, the "ignored" code; v + 1 otherwise.
                reference_codes = reference.add(1).clamp_(max=n + 1)
            else:
                reference_codes = reference.clamp(max=n).add_(1)
            bins = reference_codes.mul_(n + 1).add_(prediction_codes)
            histogram = torch.bincount(bins.reshape(-1), minlength=(n + 2) * (n + 1)).view(n + 2, n + 1)
            # State rows 1..n+1 <- reference codes 1..n+1; columns 1..n+1 <- prediction codes 0..n.
            state[1:, 1:] += histogram[1:]
            return
        bins = reference.to(torch.int16).mul_(n + 1).add_(prediction_codes)
        histogram = torch.bincount(bins.reshape(-1), minlength=256 * (n + 1)).view(256, n + 1)
        if ignore_in_byte:
            histogram[ignore] = 0
        state[1 : n + 1, 1 : n + 2] += histogram[:n]
        state[n + 1, 1 : n + 2] += histogram[n:].sum(0)

    # -- results -------------------------------------------------------------------------------

    def confusion_matrix(self) -> np.ndarray:
        """The ``(num_labels, num_labels)`` int64 confusion matrix over in-range pixels.

        Row = reference class, column = predicted class; pixels with an ignored or out-of-range
        reference or an out-of-range prediction are not in it (they still count in
        :meth:`areas`).
        """
        n = self.num_labels
        if self.counts is None:
            return np.zeros((n, n), dtype=np.int64)
        return self.counts[1 : n + 1, 1 : n + 1].cpu().numpy()

    def areas(self) -> dict[str, np.ndarray]:
        """Per-class totals as the Hub metric defines them (float64 arrays of shape (num_labels,)).

        Returns:
            ``area_intersect``, ``area_union``, ``area_pred_label``, ``area_label``.
        """
        n = self.num_labels
        counts = (
            np.zeros((n + 2, n + 2), dtype=np.int64) if self.counts is None else self.counts.cpu().numpy()
        )
        area_intersect = np.diagonal(counts)[1 : n + 1].astype(np.float64)
        area_pred_label = counts[:, 1 : n + 1].sum(axis=0).astype(np.float64)
        area_label = counts[1 : n + 1, :].sum(axis=1).astype(np.float64)
        area_union = area_pred_label + area_label - area_intersect
        return {
            "area_intersect": area_intersect,
            "area_union": area_union,
            "area_pred_label": area_pred_label,
            "area_label": area_label,
        }

    def compute(self, nan_to_num: float | None = None) -> dict[str, Any]:
        """The metrics over everything counted since the last reset (the state is kept).

        Args:
            nan_to_num: if given, NaN values are replaced by it.

        Returns:
            The Hub ``mean_iou`` dict (``mean_iou``, ``mean_accuracy``, ``overall_accuracy``,
            ``per_category_iou``, ``per_category_accuracy``) plus ``mean_dice`` and
            ``per_category_dice``; fractions in [0, 1], NaN where undefined.
        """
        return metrics_from_areas(**self.areas(), nan_to_num=nan_to_num)


def _as_uint8_if_fits(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as uint8 when all its values lie in [0, 255], else ``None`` (CPU only: it reads the
    min and max, which would synchronise an accelerator)."""
    if x.dtype == torch.uint8:
        return x
    low, high = torch.aminmax(x)
    if low.item() < 0 or high.item() > 255:
        return None
    return x.to(torch.uint8)


def _equals(x: torch.Tensor, value: int) -> torch.Tensor | None:
    """``x == value`` without integer wrap-around (``uint8 == -1`` is true for 255 in torch);
    ``None`` when the dtype cannot hold ``value``."""
    info = torch.iinfo(x.dtype)
    if not info.min <= value <= info.max:
        return None
    return x == value


# ------------------------------------------------------------------------------------------------
# One-shot function and the evaluate.Metric
# ------------------------------------------------------------------------------------------------


def mean_iou(
    predictions: Iterable[Any],
    references: Iterable[Any],
    num_labels: int,
    ignore_index: int | None,
    nan_to_num: float | None = None,
    label_map: Mapping[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict[str, Any]:
    """Mean IoU, accuracy and Dice of a list of maps, with the Hub ``mean_iou`` semantics.

    Args:
        predictions: (H, W) maps (or one (B, H, W) array/tensor) of predicted class ids.
        references: the matching ground-truth maps.
        num_labels, ignore_index, nan_to_num, label_map, reduce_labels: as the Hub metric.

    Returns:
        See :meth:`SegmentationConfusionMatrix.compute`.
    """
    accumulator = SegmentationConfusionMatrix(num_labels, ignore_index, label_map, reduce_labels)
    if not isinstance(predictions, (list, tuple, np.ndarray, torch.Tensor)):
        predictions = list(predictions)
    if not isinstance(references, (list, tuple, np.ndarray, torch.Tensor)):
        references = list(references)
    accumulator.update(predictions, references)
    return accumulator.compute(nan_to_num=nan_to_num)
