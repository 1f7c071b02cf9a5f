"""The documented stock-``Trainer`` recipe (docs/metrics.md) with the project's own model.

``transformers.Trainer`` takes its label names from ``forward``'s signature and scores a batch only
when every one of them is present; evaluation batches carry ``labels`` alone. These tests use the
real UNet-FCN (plain and with the ``hv`` head), not a stand-in module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models import tiny_unet_fcn
from test_hv_head import tiny_hv
from test_metric import reference_metrics
from test_metric_trainer import flat_expected
from transformers import Trainer, TrainingArguments
from transformers.utils import find_labels

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.metrics import make_compute_metrics, preprocess_logits_for_metrics
from pannuke_hf.models.unet_fcn import UNetFCNForSemanticSegmentation


def samples(count: int = 7, size: int = 16, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Images and label maps with every class and some ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    return [
        {
            "pixel_values": torch.from_numpy(rng.normal(size=(3, size, size)).astype(np.float32)),
            "labels": torch.from_numpy(rng.choice([0, 1, 2, 3, 4, 5, 255], size=(size, size))),
        }
        for _ in range(count)
    ]


def expected_scores(model: torch.nn.Module, rows: list[dict], batch_size: int) -> dict[str, float]:
    """eval_loss and the flat metrics from a plain loop over the same batches."""
    predictions, losses = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            pixel_values = torch.stack([r["pixel_values"] for r in chunk])
            labels = torch.stack([r["labels"] for r in chunk])
            output = model(pixel_values, labels=labels)
            losses += [output.loss.item()] * len(chunk)
            predictions += list(output.logits.argmax(1).numpy())
    labels = [r["labels"].numpy() for r in rows]
    expected = {
        f"eval_{k}": v for k, v in flat_expected(reference_metrics(predictions, labels, 6, 255)).items()
    }
    expected["eval_loss"] = float(np.mean(losses))
    return expected


def test_forward_signature_names_only_labels():
    assert find_labels(UNetFCNForSemanticSegmentation) == ["labels"]


@pytest.mark.parametrize("batch_eval_metrics", [True, False])
@pytest.mark.parametrize("head", ["plain", "hv"])
def test_stock_trainer_scores_the_real_model(tmp_path, head, batch_eval_metrics):
    torch.manual_seed(0)
    model = (tiny_unet_fcn() if head == "plain" else tiny_hv()).eval()
    rows = samples()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        batch_eval_metrics=batch_eval_metrics,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=rows,
        compute_metrics=make_compute_metrics(6, 255),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    assert trainer.label_names == ["labels"]
    metrics = trainer.evaluate()
    expected = expected_scores(model, rows, 3)
    assert 0.0 < expected["eval_mean_iou"] < 1.0  # several classes predicted: not a trivial score
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), key


def test_stock_trainer_keeps_the_hv_targets_in_training_batches(tmp_path):
    """With Trainer's default remove_unused_columns=True the targets are forward arguments, so kept."""
    model = tiny_hv().train()
    rows = [
        {**row, "nuclei_targets": (row["labels"] > 0).long(), "hv_targets": torch.zeros(2, 16, 16)}
        for row in samples(4)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, report_to=[], use_cpu=True, max_steps=1
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows)
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"pixel_values", "labels", "nuclei_targets", "hv_targets"} <= set(batch)
    trainer.train()  # one step with the three targets
