"""``pannuke-hf evaluate``: scores a checkpoint exactly as training did; clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.cli import main as cli_main
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation, UNetFCNImageProcessor
from pannuke_hf.training.augment import normalize_to_tensor, resize_pair
from pannuke_hf.training.data import load_splits


def tiny_checkpoint(path, num_labels: int = 6, size: int = 32) -> None:
    """Save a randomly initialised tiny UNet-FCN + processor (inputs ``size`` px)."""
    torch.manual_seed(0)
    config = UNetFCNConfig(base_channels=4, num_stages=2, encoder_num_convs=[2, 2], decoder_num_convs=[2],
                           strides=[1, 1], downsamples=[True], encoder_dilations=[1, 1], decoder_dilations=[1],
                           num_labels=num_labels)  # fmt: skip
    model = UNetFCNForSemanticSegmentation(config)
    # Non-trivial BatchNorm statistics so predictions are not all one class.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    model.save_pretrained(path)
    UNetFCNImageProcessor(size={"height": size, "width": size}).save_pretrained(path)


def independent_scores(model_dir, raw_root, split: str) -> tuple[np.ndarray, int]:
    """Per-class IoU by a plain loop: resize each image, predict, upsample logits, count."""
    model = UNetFCNForSemanticSegmentation.from_pretrained(model_dir).eval()
    rows = load_splits(raw_root, "reference")[split]
    inter, union = np.zeros(6), np.zeros(6)
    for row in rows:
        label = np.asarray(row["semantic_mask"]).astype(np.int64)
        image, _ = resize_pair(row["image"], None, 32)
        with torch.no_grad():
            logits = model(pixel_values=normalize_to_tensor(image)[None]).logits
        logits = torch.nn.functional.interpolate(
            logits, size=label.shape, mode="bilinear", align_corners=False
        )
        pred = logits.argmax(1)[0].numpy()
        for c in range(6):
            inter[c] += np.sum((pred == c) & (label == c))
            union[c] += np.sum((pred == c) | (label == c))
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union, len(rows)


def test_evaluate_command_matches_an_independent_loop(raw_root, tmp_path, capsys):
    torch.set_num_threads(1)
    tiny_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "eval"
    status = cli_main(["evaluate", "--model", str(tmp_path / "ckpt"), "--data-dir", str(raw_root),
                       "--split", "validation", "--out", str(out), "--batch-size", "3", "--cpu"])  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "| mIoU (%) | mDice (%) |" in printed and "non-neoplastic epithelial" in printed
    results = json.loads((out / "results.json").read_text())
    expected_iou, count = independent_scores(tmp_path / "ckpt", raw_root, "validation")
    assert results["num_images"] == count and results["split"] == "validation"
    got = np.array([np.nan if c["iou"] is None else c["iou"] for c in results["per_class"]])
    assert np.allclose(got, expected_iou, equal_nan=True, atol=1e-9)
    assert (out / "results.md").read_text().startswith("# Results on `validation`")
    # As the Hugging Face example scripts write them (issue 19.14).
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_mean_iou"] == pytest.approx(results["summary"]["mIoU"])
    assert (
        json.loads((out / "all_results.json").read_text())["eval_mean_iou"] == eval_results["eval_mean_iou"]
    )


def test_evaluate_rejects_wrong_label_count(raw_root, tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt3", num_labels=3)
    status = cli_main(["evaluate", "--model", str(tmp_path / "ckpt3"), "--data-dir", str(raw_root), "--cpu"])
    assert status == 1  # a model that does not fit the data (pannuke_hf.errors)
    err = capsys.readouterr().err
    assert "ckpt3" in err and "3 labels" in err and "PanNuke has 6" in err


def test_evaluate_rejects_missing_data_and_unknown_split(raw_root, tmp_path, capsys):
    tiny_checkpoint(tmp_path / "ckpt")
    status = cli_main(
        ["evaluate", "--model", str(tmp_path / "ckpt"), "--data-dir", str(tmp_path / "nowhere")]
    )
    assert status == 1  # a data error (pannuke_hf.errors)
    assert "nowhere" in capsys.readouterr().err
    status = cli_main(
        ["evaluate", "--model", str(tmp_path / "ckpt"), "--data-dir", str(raw_root), "--split", "test"]
    )
    assert status == 2  # a usage error: the reference scheme has no test split
    assert "--split test" in capsys.readouterr().err


def test_evaluate_command_scores_nuclei_on_request(raw_root, tmp_path, capsys):
    """``--nuclei yes --nuclei-from components``: bPQ of per-class 8-connected components of the
    predicted map (>= 10 px), recomputed here with scipy and scored with the PQ accumulator."""
    from scipy import ndimage

    from pannuke_hf.constants import TISSUES
    from pannuke_hf.metrics.pq import PanNukeInstanceMetrics

    torch.set_num_threads(1)
    tiny_checkpoint(tmp_path / "ckpt")
    out_no, out_yes = tmp_path / "eval-no", tmp_path / "eval-yes"
    base = [
        "evaluate",
        "--model",
        str(tmp_path / "ckpt"),
        "--data-dir",
        str(raw_root),
        "--cpu",
        "--batch-size",
        "3",
    ]
    assert cli_main([*base, "--out", str(out_no)]) == 0  # a semantic model: no nuclei by default
    assert "nuclei" not in json.loads((out_no / "results.json").read_text())
    assert cli_main([*base, "--out", str(out_yes), "--nuclei", "yes", "--nuclei-from", "components"]) == 0
    assert "mPQ" in capsys.readouterr().out
    nuclei = json.loads((out_yes / "results.json").read_text())["nuclei"]

    model = UNetFCNForSemanticSegmentation.from_pretrained(tmp_path / "ckpt").eval()
    metric = PanNukeInstanceMetrics()
    for row in load_splits(raw_root, "reference")["validation"]:
        label = np.asarray(row["semantic_mask"]).astype(np.int64)
        image, _ = resize_pair(row["image"], None, 32)
        with torch.no_grad():
            logits = model(pixel_values=normalize_to_tensor(image)[None]).logits
        pred = torch.nn.functional.interpolate(logits, size=label.shape, mode="bilinear").argmax(1)[0].numpy()
        instances, classes, next_id = np.zeros(label.shape, np.int64), {}, 1
        for c in range(1, 6):
            components, count = ndimage.label(pred == c, structure=np.ones((3, 3)))
            for k in range(1, count + 1):
                if (components == k).sum() >= 10:
                    instances[components == k], classes[next_id] = next_id, c
                    next_id += 1
        true = np.asarray(row["instance_mask"]).astype(np.int64)
        true_classes = dict(enumerate(row["instance_labels"], start=1))
        metric.update(true, true_classes, instances, classes, TISSUES[row["tissue"]])
    expected = metric.compute()
    assert nuclei["bPQ"] == pytest.approx(expected["bPQ"], abs=1e-9)
    assert nuclei["mPQ"] == pytest.approx(expected["mPQ"], abs=1e-9)
