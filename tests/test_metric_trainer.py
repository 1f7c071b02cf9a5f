"""Trainer glue and the results table of the metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_metric import assert_same, reference_metrics

from pannuke_hf.constants import CLASS_FULL_NAMES, CLASS_NAMES
from pannuke_hf.metrics import (
    flatten_metrics,
    logits_to_label_maps,
    make_compute_metrics,
    mean_iou,
    preprocess_logits_for_metrics,
    results_table,
    save_results,
)


def one_hot_logits(maps: np.ndarray, num_labels: int) -> torch.Tensor:
    """(B, C, h, w) logits whose argmax is ``maps``."""
    return F.one_hot(torch.from_numpy(maps).long(), num_labels).permute(0, 3, 1, 2).float()


def flat_expected(expected: dict, names=CLASS_NAMES) -> dict:
    flat = {k: expected[k] for k in ("mean_iou", "mean_dice", "overall_accuracy", "mean_accuracy")}
    for prefix, key in (
        ("iou", "per_category_iou"),
        ("dice", "per_category_dice"),
        ("acc", "per_category_accuracy"),
    ):
        flat.update({f"{prefix}_{name}": value for name, value in zip(names, expected[key])})
    return flat


def assert_flat_equal(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert isinstance(actual[key], float), key
        assert (math.isnan(actual[key]) and math.isnan(value)) or actual[key] == pytest.approx(
            value, abs=1e-12
        ), key


# ------------------------------------------------------------------------------------------------
# compute_metrics / preprocess_logits_for_metrics
# ------------------------------------------------------------------------------------------------


def test_logits_are_upsampled_bilinearly_before_the_argmax():
    rng = np.random.default_rng(0)
    low = rng.integers(0, 6, size=(2, 4, 5))
    # Bilinear x2 of one-hot logits keeps each output pixel's own source class on top (weight
    # 9/16), so the argmax is the nearest-neighbour upsampling of the low-resolution map.
    maps = logits_to_label_maps(one_hot_logits(low, 6), (8, 10))
    assert maps.shape == (2, 8, 10) and maps.dtype == torch.uint8
    np.testing.assert_array_equal(maps.numpy(), low.repeat(2, axis=1).repeat(2, axis=2))
    labels = torch.zeros(2, 8, 10, dtype=torch.long)
    via_trainer_hook = preprocess_logits_for_metrics((one_hot_logits(low, 6),), labels)
    assert torch.equal(via_trainer_hook, maps)
    same_size = preprocess_logits_for_metrics(one_hot_logits(low, 6), torch.zeros(2, 4, 5))
    np.testing.assert_array_equal(same_size.numpy(), low)


def test_batched_compute_metrics_equals_the_reference_and_resets():
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 6, size=(7, 6, 8))
    labels = rng.integers(0, 7, size=(7, 6, 8))
    labels[labels == 6] = 255
    labels[0, 0, :3] = -100  # Trainer's padding value: ignored
    expected_labels = np.where(labels == -100, 255, labels)
    expected = flat_expected(reference_metrics(predictions, expected_labels, 6, 255))
    compute_metrics = make_compute_metrics(num_labels=6, ignore_index=255)
    for _ in range(2):  # a second evaluation must not include the first one's counts
        batches = [(0, 3), (3, 6), (6, 7)]
        for i, (start, stop) in enumerate(batches):
            last = i == len(batches) - 1
            batch_predictions = (
                one_hot_logits(predictions[start:stop], 6) if i != 1 else predictions[start:stop]
            )
            out = compute_metrics(
                (batch_predictions, torch.from_numpy(labels[start:stop])), compute_result=last
            )
            if not last:
                assert out == {}
        assert_flat_equal(out, expected)
        assert compute_metrics.accumulator.num_maps == 0


def test_compute_metrics_without_batching_and_custom_names():
    from transformers import EvalPrediction

    rng = np.random.default_rng(2)
    predictions = rng.integers(0, 3, size=(4, 5, 5))
    labels = rng.integers(0, 3, size=(4, 5, 5))
    compute_metrics = make_compute_metrics(3, 255, id2label={0: "bg", 1: "a", 2: "b"})
    out = compute_metrics(
        EvalPrediction(predictions=one_hot_logits(predictions, 3).numpy(), label_ids=labels)
    )
    assert_flat_equal(out, flat_expected(reference_metrics(predictions, labels, 3, 255), ["bg", "a", "b"]))
    with pytest.raises(ValueError, match=r"no name for class ids \[2\]"):
        make_compute_metrics(3, 255, id2label={0: "bg", 1: "a"})


def test_trainer_evaluate_with_batch_eval_metrics(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)

    class TinySegmenter(torch.nn.Module):
        """Half-resolution logits, so the glue has to resize them to the labels."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, kernel_size=3, padding=1)

        def forward(self, pixel_values, labels=None):
            logits = self.conv(pixel_values)[..., ::2, ::2]
            loss = None
            if labels is not None:
                upsampled = F.interpolate(
                    logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
                )
                loss = F.cross_entropy(upsampled, labels, ignore_index=255)
            return {"loss": loss, "logits": logits}

    rng = np.random.default_rng(3)
    samples = [
        {
            "pixel_values": torch.from_numpy(rng.normal(size=(3, 8, 8)).astype(np.float32)),
            "labels": torch.from_numpy(rng.choice([0, 1, 2, 3, 4, 5, 255], size=(8, 8))),
        }
        for _ in range(7)
    ]
    model = TinySegmenter().eval()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        batch_eval_metrics=True,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=samples,
        compute_metrics=make_compute_metrics(6),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    first = trainer.evaluate()
    second = trainer.evaluate()
    with torch.no_grad():
        predictions = []
        for sample in samples:
            logits = model(sample["pixel_values"][None])["logits"]
            predictions.append(
                F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False).argmax(1)[0].numpy()
            )
    labels = [sample["labels"].numpy() for sample in samples]
    expected = {
        f"eval_{k}": v for k, v in flat_expected(reference_metrics(predictions, labels, 6, 255)).items()
    }
    for metrics in (first, second):
        assert_flat_equal({k: metrics[k] for k in expected}, expected)
    assert "eval_iou_neoplastic" in first and "eval_dice_epithelial" in first


# ------------------------------------------------------------------------------------------------
# Results table
# ------------------------------------------------------------------------------------------------


def parse_markdown_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if not all(set(cell) <= set(":-") for cell in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def sample_metrics():
    rng = np.random.default_rng(4)
    predictions = rng.integers(0, 5, size=(3, 9, 9))  # class 5 never predicted ...
    references = rng.integers(0, 5, size=(3, 9, 9))  # ... nor labelled: NaN
    return mean_iou(list(predictions), list(references), 6, 255)


def test_results_table_reference_form_with_full_names_in_percent():
    metrics = sample_metrics()
    per_class, summary = parse_markdown_tables(results_table(metrics))
    assert per_class[0] == ["Class", "IoU (%)", "Dice (%)", "Acc (%)"]  # the unit in every header
    assert [row[0] for row in per_class[1:]] == list(CLASS_FULL_NAMES)
    assert CLASS_FULL_NAMES[5] == "non-neoplastic epithelial"
    for i, row in enumerate(per_class[1:6]):
        for cell, key in zip(row[1:], ("per_category_iou", "per_category_dice", "per_category_accuracy")):
            assert float(cell) == pytest.approx(100 * metrics[key][i], abs=0.005)
    assert per_class[6][1:] == ["n/a", "n/a", "n/a"]
    assert summary[0] == ["mIoU (%)", "mDice (%)", "aAcc (%)", "mAcc (%)"]
    for cell, key in zip(summary[1], ("mean_iou", "mean_dice", "overall_accuracy", "mean_accuracy")):
        assert float(cell) == pytest.approx(100 * metrics[key], abs=0.005)


def test_results_table_reads_every_layout_the_same():
    metrics = sample_metrics()
    table = results_table(metrics)
    flat = flatten_metrics(metrics)
    assert results_table(flat) == table
    assert results_table({f"eval_{k}": v for k, v in flat.items()} | {"eval_loss": 0.3}) == table
    # A Hub mean_iou dict has no Dice: it is derived from IoU (Dice = 2 IoU / (1 + IoU)).
    hub_only = {
        k: metrics[k]
        for k in (
            "mean_iou",
            "mean_accuracy",
            "overall_accuracy",
            "per_category_iou",
            "per_category_accuracy",
        )
    }
    assert results_table(hub_only) == table
    with pytest.raises(KeyError, match="mean_iou"):
        results_table({"loss": 1.0})


def test_save_results_writes_json_and_markdown(tmp_path):
    metrics = sample_metrics()
    paths = save_results(
        flatten_metrics(metrics), tmp_path / "out", split="validation", extra={"num_images": 3}
    )
    document = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert document["split"] == "validation" and document["num_images"] == 3
    assert [c["full_name"] for c in document["per_class"]] == list(CLASS_FULL_NAMES)
    assert [c["name"] for c in document["per_class"]] == list(CLASS_NAMES)
    assert document["per_class"][5]["iou"] is None  # NaN -> null
    assert document["per_class"][1]["dice"] == pytest.approx(metrics["per_category_dice"][1])
    assert document["summary"]["mIoU"] == pytest.approx(metrics["mean_iou"])
    assert document["summary_percent"]["mDice"] == round(100 * metrics["mean_dice"], 2)
    markdown = paths["markdown"].read_text()
    assert "validation" in markdown.splitlines()[0]
    assert results_table(metrics) in markdown


def test_flatten_metrics_matches_the_metric_dict():
    metrics = sample_metrics()
    rng = np.random.default_rng(4)
    predictions = rng.integers(0, 5, size=(3, 9, 9))
    references = rng.integers(0, 5, size=(3, 9, 9))
    assert_same(metrics, reference_metrics(predictions, references, 6, 255))
    assert_flat_equal(flatten_metrics(metrics), flat_expected(metrics))
