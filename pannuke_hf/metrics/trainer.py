"""Glue between :class:`~transformers.Trainer` and the streaming mean-IoU metric.

Usage::

    args = TrainingArguments(..., batch_eval_metrics=True)
    trainer = Trainer(
        model=model,
        args=args,
        compute_metrics=make_compute_metrics(num_labels=6, ignore_index=255),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        ...,
    )
    metrics = trainer.evaluate()  # {"eval_mean_iou": ..., "eval_iou_neoplastic": ..., ...}

With ``batch_eval_metrics=True`` Trainer calls ``compute_metrics(eval_pred, compute_result)`` once
per batch; the callable counts the batch into a :class:`SegmentationConfusionMatrix` on the
model's device and returns the flat metrics on the last batch. With
``preprocess_logits_for_metrics`` Trainer keeps only (B, H, W) label maps, never the
(B, C, H, W) logits, so evaluation memory does not grow with the evaluation set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import ID2LABEL, IGNORE_INDEX
from .mean_iou import SegmentationConfusionMatrix

#: Value Trainer pads labels and predictions with when it gathers batches of different sizes
#: across processes; never a real label, so it is treated as ignored.
TRAINER_PAD_INDEX = -100


def _first(output: Any) -> Any:
    """Trainer passes a tuple when the model returns several tensors; the logits come first."""
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def logits_to_label_maps(logits: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class maps from segmentation logits.

    Args:
        logits: (B, C, h, w) scores (torch or numpy, any float dtype, any device).
        size: (H, W) of the wanted maps; when it differs from (h, w) the logits are first resized
            bilinearly (``align_corners=False``, in float32), as transformers' semantic
            post-processing and the reference evaluation do.

    Returns:
        (B, H, W) argmax maps on the logits' device: uint8 when C <= 256 (8x smaller to gather and
        faster to count), int64 otherwise.
    """
    logits = _as_tensor(logits)
    if logits.dim() != 4:
        raise ValueError(f"expected logits of shape (B, C, h, w), got {tuple(logits.shape)}")
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
    maps = logits.argmax(dim=1)
    return maps.to(torch.uint8) if logits.shape[1] <= 256 else maps


def _label_size(labels: Any) -> tuple[int, int] | None:
    if labels is None:
        return None
    shape = tuple(labels.shape) if hasattr(labels, "shape") else np.shape(labels)
    return tuple(shape[-2:]) if len(shape) >= 2 else None


def preprocess_logits_for_metrics(logits: Any, labels: Any) -> torch.Tensor:
    """``Trainer(preprocess_logits_for_metrics=...)``: logits -> argmax maps at the labels' size.

    Args:
        logits: (B, C, h, w) model logits (or a tuple whose first item they are).
        labels: (B, H, W) labels of the batch, or a tuple whose first item they are (only their
            size is used; ``None`` keeps (h, w)).

    Returns:
        (B, H, W) uint8 class maps (int64 beyond 256 classes), on the logits' device.
    """
    return logits_to_label_maps(_first(logits), _label_size(_first(labels)))


def flatten_metrics(
    metrics: Mapping[str, Any], id2label: Mapping[int, str] | None = None
) -> dict[str, float]:
    """Flat, loggable floats from a :meth:`SegmentationConfusionMatrix.compute` dict.

    Args:
        metrics: the metric dict (per-category arrays of shape (num_labels,)).
        id2label: class id -> name used in the keys; default ``pannuke_hf.constants.ID2LABEL`` when
            the class count matches PanNuke, else the ids themselves.

    Returns:
        ``mean_iou``, ``mean_dice``, ``overall_accuracy``, ``mean_accuracy``, then for every class
        ``iou_<name>``, ``dice_<name>``, ``acc_<name>``; Python floats, fractions in [0, 1], NaN for
        a class absent from both predictions and references.
    """
    num_labels = len(metrics["per_category_iou"])
    names = _class_names(num_labels, id2label)
    flat = {
        key: float(metrics[key]) for key in ("mean_iou", "mean_dice", "overall_accuracy", "mean_accuracy")
    }
    for prefix, key in (
        ("iou", "per_category_iou"),
        ("dice", "per_category_dice"),
        ("acc", "per_category_accuracy"),
    ):
        for name, value in zip(names, metrics[key]):
            flat[f"{prefix}_{name}"] = float(value)
    return flat


def _class_names(num_labels: int, id2label: Mapping[int, str] | None) -> list[str]:
    if id2label is None:
        id2label = ID2LABEL if num_labels == len(ID2LABEL) else {i: str(i) for i in range(num_labels)}
    id2label = {int(k): str(v) for k, v in id2label.items()}
    missing = [i for i in range(num_labels) if i not in id2label]
    if missing:
        raise ValueError(f"id2label has no name for class ids {missing} (num_labels={num_labels})")
    return [id2label[i] for i in range(num_labels)]


class SegmentationMetrics:
    """Callable ``compute_metrics`` for ``Trainer`` (see :func:`make_compute_metrics`).

    Attributes:
        accumulator: the :class:`SegmentationConfusionMatrix` being filled.
    """

    def __init__(
        self,
        num_labels: int,
        ignore_index: int | None = IGNORE_INDEX,
        id2label: Mapping[int, str] | None = None,
    ) -> None:
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.names = _class_names(num_labels, id2label)
        self.accumulator = SegmentationConfusionMatrix(num_labels, ignore_index)

    def update(self, predictions: Any, labels: Any) -> None:
        """Count one batch.

        Args:
            predictions: (B, C, h, w) logits (resized to the labels' size, then argmax) or
                (B, H, W) class maps; a tuple's first item is used.
            labels: (B, H, W) reference ids ((B, 1, H, W) accepted; a tuple's first item is used);
                Trainer's padding value -100 counts as ignored.
        """
        predictions = _as_tensor(_first(predictions))
        labels = _as_tensor(_first(labels))
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if predictions.dim() == 4:
            predictions = logits_to_label_maps(predictions, tuple(labels.shape[-2:]))
        if self.ignore_index is not None and not labels.dtype.is_floating_point and labels.dtype.is_signed:
            labels = labels.masked_fill(labels == TRAINER_PAD_INDEX, self.ignore_index)
        self.accumulator.update(predictions, labels)

    def compute(self) -> dict[str, float]:
        """Flat metrics of everything counted so far (see :func:`flatten_metrics`)."""
        return flatten_metrics(self.accumulator.compute(), dict(enumerate(self.names)))

    def reset(self) -> None:
        """Start a new evaluation."""
        self.accumulator.reset()

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Trainer's ``compute_metrics(eval_pred, compute_result)``.

        Args:
            eval_pred: a ``transformers.EvalPrediction`` (or a ``(predictions, label_ids)`` pair)
                holding one batch (``batch_eval_metrics=True``) or the whole set (default mode).
            compute_result: ``True`` on the last batch: return the metrics and reset the state.

        Returns:
            ``{}`` for intermediate batches; the flat metric dict after the last one.
        """
        if isinstance(eval_pred, (tuple, list)):
            predictions, labels = eval_pred[0], eval_pred[1]
        else:
            predictions, labels = eval_pred.predictions, eval_pred.label_ids
        self.update(predictions, labels)
        if not compute_result:
            return {}
        try:
            return self.compute()
        finally:
            self.reset()


def reset_metric_state(*callables: Any) -> None:
    """Empty the state of streaming metrics (each argument's ``reset()``, when it has one).

    ``Trainer`` has no "evaluation starts" hook: call this before ``trainer.evaluate()`` when an
    earlier evaluation was interrupted (``KeyboardInterrupt``, an exception in a batch), or the
    partial counts it left are mixed into the next result. ``PanNukeTrainer`` does it at the start
    of every evaluation.
    """
    for item in callables:
        reset = getattr(item, "reset", None)
        if callable(reset):
            reset()


def make_compute_metrics(
    num_labels: int, ignore_index: int | None = IGNORE_INDEX, id2label: Mapping[int, str] | None = None
) -> SegmentationMetrics:
    """Build the ``compute_metrics`` callable for ``Trainer(args=TrainingArguments(batch_eval_metrics=True))``.

    Args:
        num_labels: number of classes.
        ignore_index: label value left out (255 in PanNuke); Trainer's pad value -100 is also left out.
        id2label: class id -> name for the per-class keys (default: PanNuke's short names).

    Returns:
        A callable ``compute_metrics(eval_pred, compute_result=True) -> dict[str, float]``. It
        accepts logits (B, C, h, w) at any size (bilinearly resized to the labels' size before the
        argmax) or argmax maps (pair it with :func:`preprocess_logits_for_metrics` so Trainer never
        keeps logits), accumulates on the model's device, and after the last batch returns
        ``mean_iou``, ``mean_dice``, ``overall_accuracy``, ``mean_accuracy``, ``iou_<name>``,
        ``dice_<name>``, ``acc_<name>`` (fractions in [0, 1]) and resets itself for the next
        evaluation. It also works without ``batch_eval_metrics`` (one call on the whole set).

    Under DDP, Trainer gathers each batch from every process (dropping the samples duplicated to
    even out the last batch) before calling it, so every process counts the full evaluation set
    exactly once and returns the same numbers.
    """
    return SegmentationMetrics(num_labels, ignore_index, id2label)


# ---------------------------------------------------------------------------------------------
# Nucleus-level scores (PQ, mPQ, bPQ, F1_d) next to the pixel metrics
# ---------------------------------------------------------------------------------------------

#: How evaluation turns model outputs into nuclei: ``auto`` (the distance-map head when the model
#: has one, else ``watershed``), ``hv`` (the head, HoVer-style), ``watershed`` (per-class connected
#: components of the type map split by a distance-transform watershed) or ``components`` (plain
#: per-class connected components).
INSTANCE_MODES: tuple[str, ...] = ("auto", "hv", "watershed", "components")

#: How each post-processing is named in the results tables.
INSTANCE_MODE_DESCRIPTIONS: dict[str, str] = {
    "hv": "the hv instance head",
    "watershed": "the semantic map, nuclei split by a distance watershed",
    "components": "the semantic map, connected components",
}


def describe_instance_mode(mode: str | None) -> str:
    """``"hv (the hv instance head)"``: a post-processing mode and what it does, for tables."""
    if mode is None:
        return "unknown post-processing"
    return f"{mode} ({INSTANCE_MODE_DESCRIPTIONS[mode]})" if mode in INSTANCE_MODE_DESCRIPTIONS else mode


def _class_map(instances: np.ndarray, segments: list[dict]) -> np.ndarray:
    """(H, W) uint8 map giving every pixel the class of its nucleus (0 outside nuclei)."""
    lookup = np.zeros(len(segments) + 1, dtype=np.uint8)
    for segment in segments:
        lookup[segment["id"]] = segment["label_id"]
    return lookup[instances]


class InstancePredictions:
    """``Trainer(preprocess_logits_for_metrics=...)`` that also post-processes each batch into nuclei.

    Runs per batch on every process (before Trainer gathers), so only label maps and instance maps
    travel and nothing grows with the evaluation set.

    Args:
        mode: one of :data:`INSTANCE_MODES`.
        min_size: nuclei with fewer pixels (at the labels' resolution) are dropped (10 at 40x).

    Call: ``(outputs, labels)`` with outputs ``logits`` (B, C, h, w) or the model's tuple
    ``(logits, nuclei_logits, hv_maps)``, labels (B, H, W) or a tuple whose first item they are.
    Returns ``(label_maps (B, H, W) uint8, instance maps (B, H, W) int32, nucleus class maps
    (B, H, W) uint8)`` at the labels' size on the logits' device; the post-processing is the
    image processor's (:func:`semantic_to_instances`, :func:`hv_to_instances`) on logits
    resized bilinearly to the labels' size.
    """

    def __init__(self, mode: str = "auto", min_size: int = 10) -> None:
        if mode not in INSTANCE_MODES:
            raise ValueError(f"instance post-processing must be one of {INSTANCE_MODES}, got {mode!r}")
        self.mode = mode
        self.min_size = int(min_size)
        #: The post-processing the last batch used (``auto`` resolved), for the results tables.
        self.resolved_mode: str | None = None

    def __call__(self, logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..models.unet_fcn.image_processing_unet_fcn import hv_to_instances, semantic_to_instances

        outputs = tuple(logits) if isinstance(logits, (tuple, list)) else (logits,)
        type_logits = _as_tensor(outputs[0])
        has_head = len(outputs) >= 3 and outputs[-1] is not None and outputs[-1].shape[1] == 2
        mode = ("hv" if has_head else "watershed") if self.mode == "auto" else self.mode
        if mode == "hv" and not has_head:
            raise ValueError("instance post-processing 'hv' needs a model with instance_head='hv'")
        self.resolved_mode = mode
        size = _label_size(_first(labels)) or tuple(type_logits.shape[-2:])

        def resized(maps: Any) -> torch.Tensor:
            maps = _as_tensor(maps).detach().float()
            if tuple(maps.shape[-2:]) != tuple(size):
                maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
            return maps.cpu()

        probabilities = resized(type_logits).softmax(dim=1).numpy()
        if mode == "hv":
            nuclei = resized(outputs[-2]).softmax(dim=1)[:, 1].numpy()
            hv = resized(outputs[-1]).numpy()
        instance_maps, class_maps = [], []
        for i in range(len(probabilities)):
            if mode == "hv":
                instances, segments = hv_to_instances(
                    probabilities[i], nuclei[i], hv[i], min_size=self.min_size
                )
            else:
                instances, segments = semantic_to_instances(
                    probabilities[i], min_size=self.min_size, watershed=mode == "watershed"
                )
            instance_maps.append(instances.astype(np.int32))
            class_maps.append(_class_map(instances, segments))
        device = type_logits.device
        return (
            logits_to_label_maps(type_logits, size),
            torch.from_numpy(np.stack(instance_maps)).to(device),
            torch.from_numpy(np.stack(class_maps)).to(device),
        )


class SegmentationAndInstanceMetrics:
    """``compute_metrics`` for ``batch_eval_metrics``: the pixel metrics plus PanNuke's nucleus scores.

    Expects predictions from :class:`InstancePredictions` and label ids ``(labels (B, H, W),
    instance_mask (B, H, W)[, tissue (B,)])`` (the evaluation batch's ground truth nuclei, see
    ``PanNukeTrainer``): the class of a true nucleus is the majority of the semantic labels over
    it (the dataset's labels agree with ``instance_labels`` on every nucleus pixel). With
    ``tissue`` (indices into ``tissue_names``) mPQ / bPQ are averaged per tissue then over tissues
    (the protocol), without it over images. Batches without instance maps count only for the
    pixel metrics.

    Args:
        semantic: the pixel metric (:class:`SegmentationMetrics`).
        radius: centroid pairing radius of the detection F1 (12 px at 40x).
        tissue_names: names of the tissue indices.

    Returns (after the last batch): the pixel metrics and ``mPQ``, ``bPQ``, ``mPQ_image``,
    ``bPQ_image``, ``DQ``, ``SQ``, ``PQ_<class>``, ``F1_detection``, ``F1_<class>``, ...
    (see :meth:`~pannuke_hf.metrics.pq.PanNukeInstanceMetrics.compute`).
    """

    def __init__(
        self,
        semantic: SegmentationMetrics,
        radius: float | None = 12.0,
        tissue_names: Any = None,
    ) -> None:
        from .pq import PanNukeInstanceMetrics

        self.semantic = semantic
        self.instances = PanNukeInstanceMetrics(radius=radius)
        self.tissue_names = None if tissue_names is None else list(tissue_names)

    def update(self, predictions: Any, labels: Any) -> None:
        """Count one batch (see the class docstring for the layouts)."""
        self.semantic.update(predictions, labels)
        if not isinstance(labels, (tuple, list)) or len(labels) < 2:
            return
        if not isinstance(predictions, (tuple, list)) or len(predictions) < 3:
            raise ValueError(
                "nucleus-level evaluation needs InstancePredictions as preprocess_logits_for_metrics"
            )
        semantic = _as_tensor(labels[0]).cpu().numpy().astype(np.int64)
        true_instances = _as_tensor(labels[1]).cpu().numpy().astype(np.int64)
        tissues = _as_tensor(labels[2]).cpu().numpy() if len(labels) > 2 else None
        pred_instances = _as_tensor(predictions[1]).cpu().numpy()
        pred_classes = _as_tensor(predictions[2]).cpu().numpy()
        for i in range(len(true_instances)):
            if (semantic[i] == TRAINER_PAD_INDEX).all():  # Trainer's padding of an uneven last batch
                continue
            # ignored pixels (255, -100) carry no class: they never lie on a true nucleus
            true_classes = np.where((semantic[i] >= 0) & (semantic[i] <= 5), semantic[i], 0)
            tissue = None
            if tissues is not None:
                index = int(tissues[i])
                tissue = self.tissue_names[index] if self.tissue_names else str(index)
            self.instances.update(
                np.maximum(true_instances[i], 0), true_classes, pred_instances[i], pred_classes[i], tissue
            )

    def compute(self) -> dict[str, float]:
        """Pixel metrics and nucleus scores of everything counted so far."""
        from .pq import flatten_instance_metrics

        metrics = self.semantic.compute()
        if self.instances.num_images:
            nuclei = flatten_instance_metrics(self.instances.compute())
            nuclei.pop("num_images", None)
            metrics.update(nuclei)
        return metrics

    def reset(self) -> None:
        """Start a new evaluation."""
        self.semantic.reset()
        self.instances.reset()

    # Trainer's ``compute_metrics(eval_pred, compute_result)``: the same protocol as the pixel metrics
    __call__ = SegmentationMetrics.__call__
