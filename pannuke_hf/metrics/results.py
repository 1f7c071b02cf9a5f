"""The results table in the reference's form (per-class IoU / Dice / accuracy, then mIoU, mDice,
aAcc, mAcc, in percent), printed as Markdown and saved as ``results.json`` + ``results.md``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import CLASS_FULL_NAMES, CLASS_NAMES

_SUMMARY_KEYS = (
    ("mIoU", "mean_iou"),
    ("mDice", "mean_dice"),
    ("aAcc", "overall_accuracy"),
    ("mAcc", "mean_accuracy"),
)


@dataclass
class SegmentationResults:
    """Metrics normalised for display: fractions in [0, 1], NaN where undefined.

    Attributes:
        iou, dice, accuracy: per-class values, shape (num_labels,).
        summary: ``{"mIoU", "mDice", "aAcc", "mAcc"}`` -> value.
    """

    iou: np.ndarray
    dice: np.ndarray
    accuracy: np.ndarray
    summary: dict[str, float]


def _find_prefix(metrics: Mapping[str, Any]) -> str:
    """The prefix Trainer put before the keys ("eval_", "test_", ...), "" when none."""
    if "mean_iou" in metrics:
        return ""
    prefixes = [key[: -len("mean_iou")] for key in metrics if key.endswith("_mean_iou")]
    if len(prefixes) != 1:
        raise KeyError(
            f"no unique 'mean_iou' key in the metrics (keys: {sorted(metrics)[:12]}...); pass the dict "
            "returned by compute(), make_compute_metrics() or trainer.evaluate()"
        )
    return prefixes[0]


def normalise_results(
    metrics: Mapping[str, Any], class_names: Sequence[str] = CLASS_NAMES
) -> SegmentationResults:
    """Read either metric layout into a :class:`SegmentationResults`.

    Args:
        metrics: a :meth:`SegmentationConfusionMatrix.compute` / evaluate dict (``per_category_*``
            arrays; Hub dicts without Dice get it from IoU, Dice = 2 IoU / (1 + IoU)), or a flat
            dict from :func:`~pannuke_hf.metrics.flatten_metrics` / ``trainer.evaluate()`` (keys
            ``iou_<name>``, ``dice_<name>``, ``acc_<name>``, with or without a prefix such as ``eval_``).
        class_names: the names used in flat keys, indexed by class id.

    Returns:
        The normalised results.
    """
    prefix = _find_prefix(metrics)
    if f"{prefix}per_category_iou" in metrics:
        iou = np.asarray(metrics[f"{prefix}per_category_iou"], dtype=np.float64)
        accuracy = np.asarray(metrics[f"{prefix}per_category_accuracy"], dtype=np.float64)
        if f"{prefix}per_category_dice" in metrics:
            dice = np.asarray(metrics[f"{prefix}per_category_dice"], dtype=np.float64)
        else:
            dice = 2 * iou / (1 + iou)
    else:
        try:
            iou, dice, accuracy = (
                np.array([float(metrics[f"{prefix}{kind}_{name}"]) for name in class_names])
                for kind in ("iou", "dice", "acc")
            )
        except KeyError as error:
            raise KeyError(
                f"metrics have no per-class value {error} for class_names {list(class_names)}"
            ) from None
    summary = {}
    for label, key in _SUMMARY_KEYS:
        if f"{prefix}{key}" in metrics:
            summary[label] = float(metrics[f"{prefix}{key}"])
        elif key == "mean_dice":
            summary[label] = float(np.nanmean(dice)) if not np.isnan(dice).all() else math.nan
        else:
            raise KeyError(f"metrics have no '{prefix}{key}'")
    return SegmentationResults(iou=iou, dice=dice, accuracy=accuracy, summary=summary)


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _display_names(class_names: Sequence[str], display_names: Sequence[str] | None, num: int) -> list[str]:
    if display_names is None:
        display_names = CLASS_FULL_NAMES if tuple(class_names) == CLASS_NAMES else class_names
    if len(display_names) != num:
        raise ValueError(f"{len(display_names)} class names for {num} classes: {list(display_names)}")
    return list(display_names)


def results_table(
    metrics: Mapping[str, Any],
    class_names: Sequence[str] = CLASS_NAMES,
    display_names: Sequence[str] | None = None,
) -> str:
    """The reference's results table, as Markdown.

    Args:
        metrics: any layout :func:`normalise_results` reads (the metric dict, the flat Trainer
            dict, ``trainer.evaluate()`` output with its ``eval_`` prefix).
        class_names: class names indexed by id, as used in flat keys (default PanNuke's).
        display_names: names printed in the table; default the full PanNuke names
            (``constants.CLASS_FULL_NAMES``) for PanNuke's classes, else ``class_names``.

    Returns:
        Two Markdown tables: one row per class (IoU, Dice, Acc), then one row of mIoU, mDice,
        aAcc, mAcc; all in percent with two decimals (every header says ``(%)``), ``n/a`` for an
        undefined value (a class absent from both predictions and references).
    """
    results = normalise_results(metrics, class_names)
    names = _display_names(class_names, display_names, len(results.iou))
    lines = ["| Class | IoU (%) | Dice (%) | Acc (%) |", "|:---|---:|---:|---:|"]
    for name, iou, dice, accuracy in zip(names, results.iou, results.dice, results.accuracy):
        lines.append(f"| {name} | {_percent(iou)} | {_percent(dice)} | {_percent(accuracy)} |")
    lines += ["", "| " + " | ".join(f"{key} (%)" for key in results.summary) + " |"]
    lines.append("|" + "---:|" * len(results.summary))
    lines.append("| " + " | ".join(_percent(value) for value in results.summary.values()) + " |")
    return "\n".join(lines) + "\n"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def results_to_json(
    metrics: Mapping[str, Any],
    split: str | None = None,
    class_names: Sequence[str] = CLASS_NAMES,
    display_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document :func:`save_results` writes (NaN becomes ``null``).

    Returns:
        ``{"split", "summary" (fractions), "summary_percent", "per_class": [{"id", "name",
        "full_name", "iou", "dice", "accuracy"}], **extra}``.
    """
    results = normalise_results(metrics, class_names)
    names = _display_names(class_names, display_names, len(results.iou))
    per_class = [
        {
            "id": i,
            "name": class_names[i],
            "full_name": names[i],
            "iou": _json_number(results.iou[i]),
            "dice": _json_number(results.dice[i]),
            "accuracy": _json_number(results.accuracy[i]),
        }
        for i in range(len(results.iou))
    ]
    document = {
        "split": split,
        "summary": {key: _json_number(value) for key, value in results.summary.items()},
        "summary_percent": {
            key: None if math.isnan(value) else round(100 * value, 2)
            for key, value in results.summary.items()
        },
        "per_class": per_class,
    }
    document.update(extra or {})
    return document


def save_results(
    metrics: Mapping[str, Any],
    out_dir: str | Path,
    split: str | None = "validation",
    class_names: Sequence[str] = CLASS_NAMES,
    display_names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir`` (created if needed).

    Args:
        metrics: any layout :func:`normalise_results` reads.
        out_dir: output folder.
        split: name of the evaluated split, recorded in both files.
        class_names, display_names: see :func:`results_table`.
        extra: more JSON-serialisable fields for ``results.json`` (checkpoint, number of images...).

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = results_to_json(metrics, split, class_names, display_names, extra)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    heading = f"# Results on `{split}`\n\n" if split else "# Results\n\n"
    markdown_path = out_dir / "results.md"
    markdown_path.write_text(heading + results_table(metrics, class_names, display_names))
    return {"json": json_path, "markdown": markdown_path}
