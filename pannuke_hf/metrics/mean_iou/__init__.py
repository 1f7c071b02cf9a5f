"""The mean-IoU + Dice metric folder.

``confusion.py`` holds the computation (numpy + torch only); ``mean_iou.py`` wraps it as an
``evaluate`` metric, and ``evaluate.load`` on this folder (or on ``mean_iou.py``) loads it offline.
``MeanIoU`` is imported lazily so that the accumulator does not pull in ``evaluate``.
"""

from __future__ import annotations

from typing import Any

from .confusion import SegmentationConfusionMatrix, mean_iou, metrics_from_areas, remap_references

__all__ = ["MeanIoU", "SegmentationConfusionMatrix", "mean_iou", "metrics_from_areas", "remap_references"]


def __getattr__(name: str) -> Any:
    if name == "MeanIoU":
        from .mean_iou import MeanIoU

        return MeanIoU
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
