"""Scoring a model on a PanNuke split: the Trainer glue shared by ``train.py`` and ``pannuke-hf evaluate``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..constants import ID2LABEL, IGNORE_INDEX, NUM_LABELS, full_class_name
from ..metrics import (
    describe_instance_mode,
    make_compute_metrics,
    preprocess_logits_for_metrics,
    results_table,
    results_to_json,
    save_results,
)


def check_num_labels(config: Any, source: str, expected: int = NUM_LABELS) -> None:
    """Raise a clear error when a model's label count does not match the data's.

    Args:
        config: the model config (``num_labels``).
        source: where the model came from, for the message.
        expected: labels of the data (PanNuke: 6).
    """
    if config.num_labels != expected:
        raise ValueError(
            f"model {source!r} predicts {config.num_labels} labels but PanNuke has {expected} "
            f"({', '.join(ID2LABEL.values())}); use a PanNuke checkpoint, or fine-tune it with "
            "--ignore_mismatched_sizes true (a new head)"
        )


class EvalImageCounter:
    """Wrap a batch ``compute_metrics`` to also report ``num_images``: the label maps scored.

    Under DDP each batch reaches it gathered from every process; the count shows that no sample
    was scored twice (Trainer drops the padding duplicates of the last batch).
    """

    def __init__(self, compute_metrics: Any) -> None:
        self.compute_metrics = compute_metrics
        self.count = 0

    def __call__(self, eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        """Count the batch, then defer to the wrapped metric."""
        labels = eval_pred.label_ids
        labels = labels[0] if isinstance(labels, (tuple, list)) else labels
        self.count += int(labels.shape[0])
        metrics = self.compute_metrics(eval_pred, compute_result)
        if compute_result:
            metrics = {**metrics, "num_images": self.count}
            self.count = 0
        return metrics

    def reset(self) -> None:
        """Start a new evaluation: forget the count and the wrapped metric's state."""
        self.count = 0
        reset = getattr(self.compute_metrics, "reset", None)
        if callable(reset):
            reset()


def metric_functions(
    instance_metrics: bool = False, instance_mode: str = "auto", min_size: int = 10
) -> dict[str, Any]:
    """``Trainer`` keyword arguments for memory-flat PanNuke metrics (with ``batch_eval_metrics=True``).

    Args:
        instance_metrics: also score nuclei (mPQ, bPQ, F1_d ...): each batch is post-processed into
            nuclei (``instance_mode``) and compared with the batch's ``instance_mask`` (build the
            evaluation split with ``with_transform(..., keep_instances=True)``).
        instance_mode: one of ``pannuke_hf.metrics.trainer.INSTANCE_MODES`` (``auto``: the
            distance-map head when the model has one, else the semantic watershed).
        min_size: smallest nucleus kept by the post-processing, in pixels of the labels.
    """
    semantic = make_compute_metrics(NUM_LABELS, IGNORE_INDEX, ID2LABEL)
    if not instance_metrics:
        return {
            "compute_metrics": EvalImageCounter(semantic),
            "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
        }
    from ..constants import TISSUES
    from ..metrics.trainer import InstancePredictions, SegmentationAndInstanceMetrics

    return {
        "compute_metrics": EvalImageCounter(SegmentationAndInstanceMetrics(semantic, tissue_names=TISSUES)),
        "preprocess_logits_for_metrics": InstancePredictions(instance_mode, min_size),
    }


#: (heading, metric key) of the nucleus-level table, in order.
NUCLEI_TABLE_KEYS: tuple[tuple[str, str], ...] = (
    ("mPQ", "mPQ"),
    ("bPQ", "bPQ"),
    ("F1_d", "F1_detection"),
    ("mPQ (image avg)", "mPQ_image"),
    ("bPQ (image avg)", "bPQ_image"),
)


def nuclei_results(metrics: Mapping[str, Any], prefix: str = "eval_") -> dict[str, Any] | None:
    """The nucleus-level part of the evaluation metrics, or None when they were not computed.

    Returns:
        ``{"mPQ", "bPQ", "F1_d", "mPQ_image", "bPQ_image", "DQ", "SQ", "per_class": {name: {"PQ",
        "F1"}}}`` as fractions (NaN as None).
    """
    if f"{prefix}bPQ" not in metrics:
        return None

    def number(key: str) -> float | None:
        value = metrics.get(f"{prefix}{key}")
        return None if value is None or value != value else float(value)

    out = {name: number(key) for name, key in NUCLEI_TABLE_KEYS if name in ("mPQ", "bPQ", "F1_d")}
    out.update({key: number(key) for key in ("mPQ_image", "bPQ_image", "DQ", "SQ")})
    out["per_class"] = {
        name: {"PQ": number(f"PQ_{name}"), "F1": number(f"F1_{name}")}
        for name in ID2LABEL.values()
        if name != ID2LABEL[0]
    }
    return out


def nuclei_table(metrics: Mapping[str, Any], prefix: str = "eval_") -> str:
    """Markdown table of the nucleus scores (percent): mPQ, bPQ, F1_d, image-averaged mPQ / bPQ, then
    the PQ of each class; empty string when they were not computed."""
    if f"{prefix}bPQ" not in metrics:
        return ""

    def percent(key: str) -> str:
        value = metrics.get(f"{prefix}{key}")
        return "n/a" if value is None or value != value else f"{100 * float(value):.2f}"

    names = [name for i, name in sorted(ID2LABEL.items()) if i != 0]
    lines = [
        "| " + " | ".join(f"{heading} (%)" for heading, _ in NUCLEI_TABLE_KEYS) + " |",
        "|" + "---:|" * len(NUCLEI_TABLE_KEYS),
        "| " + " | ".join(percent(key) for _, key in NUCLEI_TABLE_KEYS) + " |",
        "",
        "| " + " | ".join(f"PQ {full_class_name(name)} (%)" for name in names) + " |",
        "|" + "---:|" * len(names),
        "| " + " | ".join(percent(f"PQ_{name}") for name in names) + " |",
    ]
    return "\n".join(lines) + "\n"


def evaluate_and_report(
    trainer: Any,
    eval_dataset: Any,
    split: str,
    output_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``eval_dataset``; on the main process print the table and write results.json/.md,
    ``eval_results.json`` and (merged) ``all_results.json``.

    Args:
        trainer: a ``Trainer`` built with :func:`metric_functions`.
        eval_dataset: the transformed evaluation split.
        split: its name (recorded in the results).
        output_dir: where ``results.json`` / ``results.md`` go (``eval_results.json`` /
            ``all_results.json`` go to ``trainer.args.output_dir``).
        extra: more fields for ``results.json``.

    Returns:
        The ``trainer.evaluate`` metrics (``eval_`` prefix), with ``results`` (the JSON document)
        and ``results_markdown`` added on the main process.
    """
    metrics = trainer.evaluate(eval_dataset=eval_dataset, metric_key_prefix="eval")
    trainer.log_metrics("eval", metrics)
    # As the Hugging Face example scripts: eval_results.json, merged into all_results.json
    # (beside train_results.json after training); main process only.
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        num_images = int(metrics.get("eval_num_images", 0))
        table = results_table(metrics)
        nuclei = nuclei_results(metrics)
        # which post-processing made the nuclei (auto resolved by the metric's preprocessing)
        mode = getattr(trainer.preprocess_logits_for_metrics, "resolved_mode", None)
        made_by = f"nuclei from {describe_instance_mode(mode)}"
        if nuclei is not None:
            table += (
                f"\nNuclei ({made_by}; PanNuke protocol: PQ per image, then over tissues; F1_d pooled):\n\n"
            )
            table += nuclei_table(metrics)
        print(f"\nResults on `{split}` ({num_images} images):\n\n{table}", flush=True)
        document_extra = {"num_images": num_images, **(extra or {})}
        if nuclei is not None:
            document_extra["nuclei"] = {**nuclei, "nuclei_from": mode}
        paths = save_results(metrics, output_dir, split=split, extra=document_extra)
        if nuclei is not None:
            with open(paths["markdown"], "a") as markdown:
                markdown.write(f"\n## Nuclei ({made_by})\n\n" + nuclei_table(metrics))
        metrics["results"] = results_to_json(metrics, split=split, extra=document_extra)
        metrics["results_markdown"] = table
    return metrics


def load_checkpoint(model_path: str) -> tuple[Any, Any]:
    """Load a semantic-segmentation checkpoint and its image processor, checking its label count.

    Args:
        model_path: checkpoint folder or Hub id.

    Returns:
        ``(model, image_processor)``; a default ``UNetFCNImageProcessor`` when none was saved.

    Raises:
        FileNotFoundError: nothing loadable at ``model_path``.
        ValueError: the model does not predict PanNuke's 6 labels.
    """
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import pannuke_hf  # noqa: F401 - registers the UNet-FCN Auto classes

    from ..models.unet_fcn import UNetFCNImageProcessor

    try:
        model = AutoModelForSemanticSegmentation.from_pretrained(model_path)
    except OSError as error:
        raise FileNotFoundError(f"cannot load a model from {model_path!r}: {error}") from error
    check_num_labels(model.config, model_path)
    try:
        processor = AutoImageProcessor.from_pretrained(model_path)
    except (OSError, ValueError):
        processor = UNetFCNImageProcessor()
    return model, processor


def evaluate_checkpoint(
    model_path: str,
    data_dir: str | Path,
    split: str = "validation",
    split_scheme: str = "reference",
    out_dir: str | Path = "eval_results",
    batch_size: int = 8,
    image_size: int | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    num_workers: int = 0,
    use_cpu: bool = False,
    bf16: bool = False,
    instance_metrics: bool | None = None,
    instance_mode: str = "auto",
    void_label: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a checkpoint on a PanNuke split (the reference's "testing command").

    Runs under ``torchrun``/``accelerate launch`` as well: every process scores its share and the
    metrics are gathered (each image counted once).

    Args:
        model_path: checkpoint folder or Hub id.
        data_dir: raw PanNuke folds folder.
        split: ``train``, ``validation`` or (fold schemes) ``test``.
        split_scheme: ``reference`` or ``fold1``/``fold2``/``fold3``.
        out_dir: where ``results.json`` and ``results.md`` go.
        batch_size: images per forward pass and process.
        image_size: model input side (default: the processor's size).
        max_samples: score only the first N images.
        cache_dir: datasets cache folder.
        num_workers: DataLoader workers.
        use_cpu: stay on the CPU even when a GPU is present.
        bf16: run the model under bf16 autocast (faster on GPUs; the default fp32 is the reference's
            evaluation). On CUDA the model runs channels-last either way (see ``PanNukeTrainer``).
        instance_metrics: also score nuclei (mPQ, bPQ, F1_d); default: when the model has an
            instance head.
        instance_mode: how nuclei are made (see :func:`metric_functions`).
        void_label: label of void pixels: 0 (background) or 255 (left out of the metrics).
        extra: more fields for ``results.json``.

    Returns:
        The evaluation metrics (``eval_`` prefix; ``results`` holds the JSON document).
    """
    from .arguments import PanNukeTrainingArguments
    from .data import collate_segmentation, load_splits, take_first, with_transform
    from .trainer import PanNukeTrainer

    # clear error first when data is missing
    splits = load_splits(data_dir, split_scheme, cache_dir, void_label=void_label)
    if split not in splits:
        raise ValueError(
            f"split {split!r} does not exist for split scheme {split_scheme!r} (splits: {list(splits)})"
        )
    model, processor = load_checkpoint(model_path)
    size = image_size or int(getattr(processor, "size", {}).get("height", 512))
    if instance_metrics is None:
        instance_metrics = getattr(model.config, "instance_head", None) is not None
    dataset = with_transform(
        take_first(splits[split], max_samples),
        size,
        train=False,
        mean=processor.image_mean,
        std=processor.image_std,
        keep_instances=instance_metrics,
    )
    args = PanNukeTrainingArguments(
        output_dir=str(out_dir),
        do_train=False,
        per_device_eval_batch_size=batch_size,
        dataloader_num_workers=num_workers,
        report_to="none",
        use_cpu=use_cpu,
        bf16=bf16,
    )
    trainer = PanNukeTrainer(
        model=model,
        args=args,
        data_collator=collate_segmentation,
        processing_class=processor,
        **metric_functions(instance_metrics, instance_mode),
    )
    extra = {
        "checkpoint": str(model_path),
        "split_scheme": split_scheme,
        "image_size": size,
        "void_label": void_label,
        **(extra or {}),
    }
    return evaluate_and_report(trainer, dataset, split, out_dir, extra)
