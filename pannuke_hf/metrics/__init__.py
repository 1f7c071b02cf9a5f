"""Segmentation metrics: mean IoU + Dice with the Hub ``mean_iou`` semantics, streaming.

* :class:`SegmentationConfusionMatrix`: streaming accumulator (``update`` per batch on the model's
  device, ``compute`` once); memory does not depend on the evaluation set's size.
* :func:`mean_iou`: one-shot function over lists of maps.
* :class:`MeanIoU` / :data:`MEAN_IOU_PATH`: the ``evaluate`` metric, also loadable offline with
  ``evaluate.load(MEAN_IOU_PATH)``.
* :func:`make_compute_metrics`, :func:`preprocess_logits_for_metrics`: ``Trainer`` glue
  (``TrainingArguments(batch_eval_metrics=True)``).
* :func:`results_table`, :func:`save_results`: the reference's results table (Markdown, JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .mean_iou import SegmentationConfusionMatrix, mean_iou, metrics_from_areas, remap_references
from .results import SegmentationResults, normalise_results, results_table, results_to_json, save_results
from .trainer import (
    SegmentationMetrics,
    flatten_metrics,
    logits_to_label_maps,
    make_compute_metrics,
    preprocess_logits_for_metrics,
)

#: Folder of the self-contained ``evaluate`` metric: ``evaluate.load(MEAN_IOU_PATH)`` works offline.
MEAN_IOU_PATH: str = str(Path(__file__).resolve().parent / "mean_iou")

__all__ = [
    "MEAN_IOU_PATH",
    "MeanIoU",
    "SegmentationConfusionMatrix",
    "SegmentationMetrics",
    "SegmentationResults",
    "flatten_metrics",
    "logits_to_label_maps",
    "make_compute_metrics",
    "mean_iou",
    "metrics_from_areas",
    "normalise_results",
    "preprocess_logits_for_metrics",
    "remap_references",
    "results_table",
    "results_to_json",
    "save_results",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing `evaluate` is slow and the Trainer glue does not need it.
    if name == "MeanIoU":
        from .mean_iou import MeanIoU

        return MeanIoU
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
