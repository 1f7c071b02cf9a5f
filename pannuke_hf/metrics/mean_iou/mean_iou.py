# Copyright 2026 The pannuke-hf authors. Licensed under the Apache License, Version 2.0.
"""The ``evaluate`` metric: Hub ``mean_iou`` outputs, key by key, plus ``mean_dice`` and ``per_category_dice``.

Load it offline with ``evaluate.load("<path to this folder>")`` (or to this file): evaluate copies
this file and ``confusion.py`` (its only local import) into its module cache. The computation
lives in ``confusion.py``; see its docstring for the exact semantics.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import evaluate
import numpy as np

from .confusion import mean_iou

_DESCRIPTION = """\
Mean Intersection-over-Union (and Dice) for semantic segmentation. For each class, the
intersection, union, prediction and label areas are summed over all images, then
IoU = intersection / union, accuracy = intersection / label area and
Dice = 2 * intersection / (prediction area + label area). The means skip classes absent from both
prediction and reference (NaN). Outputs match the Hub `mean_iou` metric key by key, plus
`mean_dice` and `per_category_dice`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`):
        Predicted segmentation maps, each of shape (height, width), integer class ids.
    references (`List[ndarray]`):
        Ground-truth segmentation maps, each of the same shape as its prediction.
    num_labels (`int`):
        Number of classes; ids outside [0, num_labels - 1] belong to no class.
    ignore_index (`int`):
        Reference value whose pixels are left out entirely (usually 255).
    nan_to_num (`float`, *optional*):
        If given, every NaN in the outputs is replaced by this number.
    label_map (`dict`, *optional*):
        Old reference id -> new reference id, applied to the references in the dict's order
        (each mapping sees the result of the previous ones, as the Hub metric does).
    reduce_labels (`bool`, *optional*, defaults to `False`):
        Reference 0 becomes 255 and every other reference id is lowered by 1 (254 becomes 255).

Returns:
    mean_iou (`float`): IoU averaged over classes (NaN classes skipped).
    mean_accuracy (`float`): per-class accuracy (recall) averaged over classes.
    overall_accuracy (`float`): correctly classified pixels / labelled pixels.
    per_category_iou (`ndarray` of shape `(num_labels,)`).
    per_category_accuracy (`ndarray` of shape `(num_labels,)`).
    mean_dice (`float`): Dice averaged over classes (NaN classes skipped).
    per_category_dice (`ndarray` of shape `(num_labels,)`).

Examples:

    >>> metric = evaluate.load(pannuke_hf.metrics.MEAN_IOU_PATH)
    >>> predictions = [np.array([[0, 1], [1, 255]])]
    >>> references = [np.array([[0, 1], [2, 255]])]
    >>> results = metric.compute(predictions=predictions, references=references, num_labels=3, ignore_index=255)
    >>> print(round(float(results["mean_iou"]), 4), round(float(results["overall_accuracy"]), 4))
    0.5 0.6667
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author  = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  month   = {7},
  title   = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url     = {https://github.com/open-mmlab/mmsegmentation},
  year    = {2020}
}
"""


def encode_map(value: Any, what: str = "map", index: int = 0) -> bytes:
    """One segmentation map as ``.npy`` bytes: the row evaluate's Arrow cache stores.

    The map keeps its dtype and shape exactly (a uint8 map costs one byte per pixel, an int64 map
    keeps ids of any size), and writing and reading it back are single copies: far cheaper than
    nested lists of int64, which Arrow builds and converts back to Python ints value by value.

    Args:
        value: a map: numpy array, torch tensor, PIL image or nested lists of numbers.
        what, index: name the input in errors (``predictions`` / ``references`` and its position).

    Raises:
        TypeError: the map does not hold numbers (strings, objects, ragged lists).
        ValueError: the map is not two-dimensional.
    """
    if hasattr(value, "detach"):  # torch tensor, on any device (torch is not imported here)
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise TypeError(f"mean_iou: {what} {index} is not a rectangular map: {err}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"mean_iou: {what} {index}: expected a map of integer ids, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"mean_iou: {what} {index}: expected a (height, width) map, got shape {array.shape}")
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_map(data: bytes) -> np.ndarray:
    """The map stored by :func:`encode_map` (same dtype, shape and values)."""
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _encode_maps(values: Iterable[Any] | None, what: str) -> list[bytes] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise TypeError(f"mean_iou: {what} must be a list of maps, got {type(values).__name__}")
    return [encode_map(value, what, index) for index, value in enumerate(values)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    """The ``evaluate`` metric: Hub ``mean_iou`` outputs plus ``mean_dice`` / ``per_category_dice``.

    Inputs go through evaluate's Arrow cache, one ``.npy`` blob per map (see :func:`encode_map`):
    ``add`` / ``add_batch`` / ``compute`` take the same maps as the Hub metric. For training loops
    use :class:`SegmentationConfusionMatrix` directly (no cache at all).
    """

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # One (height, width) map per row, as .npy bytes (dtype, shape and ids of any
                    # value kept: out-of-range ids must reach _compute intact to be dropped the
                    # Hub's way). add / add_batch encode the maps the user passes.
                    "predictions": datasets.Value("binary"),
                    "references": datasets.Value("binary"),
                }
            ),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/mean_iou"],
        )

    def add_batch(self, *, predictions: Any = None, references: Any = None, **kwargs: Any) -> None:
        """Add a batch of maps (a list of (H, W) maps, or a (B, H, W) array or tensor each)."""
        super().add_batch(
            predictions=_encode_maps(predictions, "predictions"),
            references=_encode_maps(references, "references"),
            **kwargs,
        )

    def add(self, *, prediction: Any = None, reference: Any = None, **kwargs: Any) -> None:
        """Add one (H, W) prediction and its reference."""
        # evaluate also accepts the feature names (``predictions=``, ``references=``) here.
        for name in ("predictions", "references"):
            if kwargs.get(name) is not None:
                kwargs[name] = encode_map(kwargs[name], name)
        super().add(
            prediction=None if prediction is None else encode_map(prediction, "prediction"),
            reference=None if reference is None else encode_map(reference, "reference"),
            **kwargs,
        )

    def _compute(
        self,
        predictions: list[Any],
        references: list[Any],
        num_labels: int | None = None,
        ignore_index: int | None = None,
        nan_to_num: float | None = None,
        label_map: Mapping[int, int] | None = None,
        reduce_labels: bool = False,
    ) -> dict[str, Any]:
        if num_labels is None:
            raise ValueError("mean_iou: `num_labels` is required")
        if ignore_index is None:
            raise ValueError("mean_iou: `ignore_index` is required (e.g. 255)")
        maps = [decode_map(p) for p in predictions]
        refs = [decode_map(r) for r in references]
        return mean_iou(maps, refs, num_labels, ignore_index, nan_to_num, label_map, reduce_labels)
