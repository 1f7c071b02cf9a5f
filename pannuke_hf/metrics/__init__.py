"""Segmentation metrics: mean IoU + Dice with the Hub ``mean_iou`` semantics, streaming.

* :class:`SegmentationConfusionMatrix`: streaming accumulator (``update`` per batch on the model's
  device, ``compute`` once); memory does not depend on the evaluation set's size.
* :func:`mean_iou`: one-shot function over lists of maps.
* :class:`MeanIoU` / :data:`MEAN_IOU_PATH`: the ``evaluate`` metric, also loadable offline with
  ``evaluate.load(MEAN_IOU_PATH)``.
* :func:`make_compute_metrics`, :func:`preprocess_logits_for_metrics`: ``Trainer`` glue
  (``TrainingArguments(batch_eval_metrics=True)``).
* :func:`results_table`, :func:`save_results`: the reference's results table (Markdown, JSON).
* :class:`PanNukeInstanceMetrics`, :data:`PANOPTIC_QUALITY_PATH`: PanNuke's nucleus-level scores
  (PQ, mPQ, bPQ, F1), see :mod:`pannuke_hf.metrics.pq`.

Names load lazily: the nucleus-level metrics need neither torch nor ``evaluate``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

#: Folder of the self-contained ``evaluate`` metric: ``evaluate.load(MEAN_IOU_PATH)`` works offline.
MEAN_IOU_PATH: str = str(Path(__file__).resolve().parent / "mean_iou")

# Lazy: the mean-IoU accumulator and Trainer glue import torch, the PQ metrics must not
# (``pannuke-hf score`` stays torch-free), and ``evaluate`` is slow to import.
_LAZY: dict[str, str] = {
    "MeanIoU": ".mean_iou.mean_iou",
    "SegmentationConfusionMatrix": ".mean_iou.confusion",
    "mean_iou": ".mean_iou.confusion",
    "metrics_from_areas": ".mean_iou.confusion",
    "remap_references": ".mean_iou.confusion",
    "SegmentationResults": ".results",
    "normalise_results": ".results",
    "results_table": ".results",
    "results_to_json": ".results",
    "save_results": ".results",
    "SegmentationMetrics": ".trainer",
    "flatten_metrics": ".trainer",
    "logits_to_label_maps": ".trainer",
    "make_compute_metrics": ".trainer",
    "preprocess_logits_for_metrics": ".trainer",
    "describe_instance_mode": ".trainer",
    "reset_metric_state": ".trainer",
    "PANOPTIC_QUALITY_PATH": ".pq",
    "PanNukeInstanceMetrics": ".pq",
    "PanopticQuality": ".pq",
    "flatten_instance_metrics": ".pq",
    "instance_results_tables": ".pq",
    "save_instance_results": ".pq",
    "make_instance_compute_metrics": ".pq",
    "panoptic_quality": ".pq",
}

__all__ = sorted(["MEAN_IOU_PATH", *_LAZY])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MetricsModule(types.ModuleType):
    """The function ``mean_iou`` keeps shadowing the ``mean_iou`` sub-package once it is imported."""

    def __getattribute__(self, name: str) -> Any:
        if name == "mean_iou":
            return importlib.import_module(".mean_iou.confusion", __name__).mean_iou
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _MetricsModule
