"""PanNuke's official nucleus-level scores: PQ, mPQ, bPQ (tissue- and image-averaged), DQ, SQ, F1.

* :class:`PanNukeInstanceMetrics`: the streaming accumulator. ``update(true_instances,
  true_classes, pred_instances, pred_classes, tissue=None)`` (instance maps + ``{id: label}`` or
  the dataset's ``instance_labels``), ``update_release(true, pred, tissue=None)`` ((H, W, 5|6)
  release-format arrays, exactly the official script's per-class channels), ``compute()``,
  ``reset()``, ``merge(other)`` (worker processes), ``image_table()``. It keeps 18 floats per image
  and the pooled F1 counts.
* :func:`panoptic_quality`: PQ / DQ / SQ of two instance maps.
* :func:`make_instance_compute_metrics`: Trainer glue. Given ``to_instances(predictions,
  label_ids)`` that yields ``(true_instances, true_classes, pred_instances, pred_classes, tissue)``
  per image of a batch, it returns ``compute_metrics(eval_pred, compute_result)`` for
  ``TrainingArguments(batch_eval_metrics=True)``, returning :func:`flatten_instance_metrics` of
  the set after the last batch (then resetting). Its ``.metric`` attribute is the accumulator.
* :data:`PANOPTIC_QUALITY_PATH` / ``PanopticQuality``: the ``evaluate`` module, loadable offline
  with ``evaluate.load(PANOPTIC_QUALITY_PATH)`` (inputs in the release form).
* :mod:`.results`: the official tables (overall, per class, per tissue) as Markdown, JSON and CSV.

See :mod:`.core` for the protocol, stated once. numpy + scipy only (no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...nuclei import NucleiInputError, instance_ids
from .accumulator import (
    NO_TISSUE,
    PanNukeInstanceMetrics,
    flatten_instance_metrics,
    make_instance_compute_metrics,
)
from .core import IOU_THRESHOLD, SQ_EPSILON, PQCounts, pq_counts
from .results import instance_results_tables, instance_results_to_json, save_instance_results

#: Folder of the ``evaluate`` module: ``evaluate.load(PANOPTIC_QUALITY_PATH)`` works offline.
PANOPTIC_QUALITY_PATH: str = str(Path(__file__).resolve().parent)


def panoptic_quality(true_instances: Any, pred_instances: Any, where: str | None = None) -> dict[str, float]:
    """PQ, DQ and SQ of two instance maps (one class, or the binary maps).

    Args:
        true_instances, pred_instances: instance maps of one shape (0 = no nucleus; any ids,
            integer or whole-valued float).
        where: the image, for error messages.

    Returns:
        ``{"PQ", "DQ", "SQ", "TP", "FP", "FN"}``; PQ/DQ/SQ NaN when the truth has no nucleus,
        0 when the prediction has none.

    Raises:
        NucleiInputError: different shapes or bad ids.
    """
    t = instance_ids(true_instances, where, "true instance ids")
    p = instance_ids(pred_instances, where, "predicted instance ids")
    if t.shape != p.shape:
        raise NucleiInputError(f"{where + ': ' if where else ''}shapes differ: {t.shape} and {p.shape}")
    counts = pq_counts(t, p)
    pq, dq, sq = counts.scores()
    return {"PQ": pq, "DQ": dq, "SQ": sq, "TP": counts.tp, "FP": counts.fp, "FN": counts.fn}


def __getattr__(name: str) -> Any:
    # Lazy: importing `evaluate` is slow and the accumulator does not need it.
    if name == "PanopticQuality":
        from .pq import PanopticQuality

        return PanopticQuality
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IOU_THRESHOLD",
    "NO_TISSUE",
    "PANOPTIC_QUALITY_PATH",
    "PQCounts",
    "PanNukeInstanceMetrics",
    "PanopticQuality",
    "SQ_EPSILON",
    "flatten_instance_metrics",
    "instance_results_tables",
    "instance_results_to_json",
    "make_instance_compute_metrics",
    "panoptic_quality",
    "pq_counts",
    "save_instance_results",
]
