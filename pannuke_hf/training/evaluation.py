"""Scoring a model on a PanNuke split: the Trainer glue shared by ``train.py`` and ``pannuke-hf evaluate``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..constants import ID2LABEL, IGNORE_INDEX, NUM_LABELS
from ..metrics import (
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
        self.count += int(eval_pred.label_ids.shape[0])
        metrics = self.compute_metrics(eval_pred, compute_result)
        if compute_result:
            metrics = {**metrics, "num_images": self.count}
            self.count = 0
        return metrics


def metric_functions() -> dict[str, Any]:
    """``Trainer`` keyword arguments for memory-flat PanNuke metrics (with ``batch_eval_metrics=True``)."""
    return {
        "compute_metrics": EvalImageCounter(make_compute_metrics(NUM_LABELS, IGNORE_INDEX, ID2LABEL)),
        "preprocess_logits_for_metrics": preprocess_logits_for_metrics,
    }


def evaluate_and_report(
    trainer: Any,
    eval_dataset: Any,
    split: str,
    output_dir: str | Path,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``eval_dataset``; on the main process print the table and write results.json/.md.

    Args:
        trainer: a ``Trainer`` built with :func:`metric_functions`.
        eval_dataset: the transformed evaluation split.
        split: its name (recorded in the results).
        output_dir: where ``results.json`` / ``results.md`` go.
        extra: more fields for ``results.json``.

    Returns:
        The ``trainer.evaluate`` metrics (``eval_`` prefix), with ``results`` (the JSON document)
        and ``results_markdown`` added on the main process.
    """
    metrics = trainer.evaluate(eval_dataset=eval_dataset, metric_key_prefix="eval")
    trainer.log_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        num_images = int(metrics.get("eval_num_images", 0))
        table = results_table(metrics)
        print(f"\nResults on `{split}` ({num_images} images):\n\n{table}", flush=True)
        document_extra = {"num_images": num_images, **(extra or {})}
        save_results(metrics, output_dir, split=split, extra=document_extra)
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

    Returns:
        The evaluation metrics (``eval_`` prefix; ``results`` holds the JSON document).
    """
    from .arguments import PanNukeTrainingArguments
    from .data import collate_segmentation, load_splits, take_first, with_transform
    from .trainer import PanNukeTrainer

    splits = load_splits(data_dir, split_scheme, cache_dir)  # clear error first when data is missing
    if split not in splits:
        raise ValueError(
            f"split {split!r} does not exist for split scheme {split_scheme!r} (splits: {list(splits)})"
        )
    model, processor = load_checkpoint(model_path)
    size = image_size or int(getattr(processor, "size", {}).get("height", 512))
    dataset = with_transform(
        take_first(splits[split], max_samples),
        size,
        train=False,
        mean=processor.image_mean,
        std=processor.image_std,
    )
    args = PanNukeTrainingArguments(
        output_dir=str(out_dir),
        do_train=False,
        per_device_eval_batch_size=batch_size,
        dataloader_num_workers=num_workers,
        report_to="none",
        use_cpu=use_cpu,
    )
    trainer = PanNukeTrainer(
        model=model,
        args=args,
        data_collator=collate_segmentation,
        processing_class=processor,
        **metric_functions(),
    )
    extra = {"checkpoint": str(model_path), "split_scheme": split_scheme, "image_size": size}
    return evaluate_and_report(trainer, dataset, split, out_dir, extra)
