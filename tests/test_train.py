"""End-to-end training on generated raw data with a tiny UNet-FCN (in process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.model_selection import train_test_split
from transformers import AutoModelForSemanticSegmentation

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.data.splits import reference_split_sizes
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation
from pannuke_hf.training.data import collate_segmentation, load_splits, with_transform
from pannuke_hf.training.run import run
from pannuke_hf.training.schedule import build_sgd, poly_lr


def tiny_argv(data_dir, out_dir, *extra: str) -> list[str]:
    """Arguments of a seconds-long run: 32 px inputs, 4-channel 2-stage UNet."""
    return [
        "--data_dir", str(data_dir), "--output_dir", str(out_dir),
        "--image_size", "32", "--base_channels", "4", "--num_stages", "2",
        "--max_steps", "4", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--learning_rate", "0.01", "--logging_steps", "1",
        "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--report_to", "none", "--seed", "0", "--torch_num_threads", "1",
        *extra,
    ]  # fmt: skip


def background_only_checkpoint(path) -> None:
    """A tiny checkpoint that predicts background everywhere, and still does after a few steps.

    The classifier's weights are 0 and its background bias exceeds the others by 100: four SGD
    steps at lr 0.01 move a logit by far less than that (each gradient entry of the 1x1
    classifier is bounded by the feature magnitude), so the evaluated model's argmax stays 0.
    """
    torch.manual_seed(0)
    config = UNetFCNConfig(base_channels=4, num_stages=2, encoder_num_convs=[2, 2], decoder_num_convs=[2],
                           strides=[1, 1], downsamples=[True], encoder_dilations=[1, 1], decoder_dilations=[1],
                           head_dropout=0.0)  # fmt: skip
    model = UNetFCNForSemanticSegmentation(config)
    with torch.no_grad():
        model.decode_head.classifier.weight.zero_()
        model.decode_head.classifier.bias.copy_(torch.tensor([100.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    model.save_pretrained(path)


def background_only_scores(raw_root, fold_sizes: dict[int, int]) -> dict[str, float]:
    """The metrics of an all-background prediction on the reference validation split, from the
    raw masks and the definitions alone (scikit-learn's split; label = last class channel set, 0
    where none; IoU / Dice / accuracy from areas summed over the split, absent classes skipped)."""
    ids = sorted(f"fold{k}_{i:04d}" for k, n in fold_sizes.items() for i in range(n))
    validation = train_test_split(ids, test_size=0.2, random_state=0)[1]
    background = total = 0
    present = set()
    for patch in validation:
        fold, index = int(patch[4]), int(patch[6:])
        masks = np.load(raw_root / f"Fold {fold}" / "masks" / f"fold{fold}" / "masks.npy", mmap_mode="r")
        label = np.zeros((256, 256), dtype=np.int64)
        for channel in range(5):
            label[masks[index, :, :, channel] != 0] = channel + 1
        present |= set(np.unique(label).tolist())
        background += int((label == 0).sum())
        total += label.size
    n = len(present)  # the background prediction adds no class the references lack
    return {
        "num_images": len(validation),
        "mean_iou": (background / total) / n,
        "mean_dice": (2 * background / (background + total)) / n,
        "overall_accuracy": background / total,
        "mean_accuracy": 1.0 / n,
        "num_classes": n,
    }


def test_training_run_end_to_end(raw_root, raw_fold_sizes, tmp_path):
    out = tmp_path / "run"
    background_only_checkpoint(tmp_path / "start")
    metrics = run(
        tiny_argv(
            raw_root, out, "--prediction_figure_samples", "2", "--model_name_or_path", str(tmp_path / "start")
        )
    )

    n_val = reference_split_sizes(sum(raw_fold_sizes.values()))[1]
    assert metrics["eval_num_images"] == n_val  # every validation image scored once
    # The evaluated model predicts background everywhere: its scores are known exactly.
    expected = background_only_scores(raw_root, raw_fold_sizes)
    assert expected["num_images"] == n_val and expected["num_classes"] > 1  # not a trivial 1.0
    for key in ("mean_iou", "mean_dice", "overall_accuracy", "mean_accuracy"):
        assert metrics[f"eval_{key}"] == pytest.approx(expected[key], rel=1e-9), key
    assert metrics["eval_iou_neoplastic"] == 0.0 and metrics["eval_acc_background"] == 1.0

    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "validation" and results["num_images"] == n_val
    assert results["summary"]["mIoU"] == pytest.approx(metrics["eval_mean_iou"])
    assert [c["name"] for c in results["per_class"]][:2] == ["background", "neoplastic"]
    assert "| mIoU (%) | mDice (%) |" in (out / "results.md").read_text()
    # As the Hugging Face example scripts: eval_results.json, merged with train_results.json.
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_mean_iou"] == pytest.approx(metrics["eval_mean_iou"])
    assert eval_results["eval_num_images"] == n_val
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results["eval_mean_iou"] == eval_results["eval_mean_iou"] and "train_runtime" in all_results

    # The LR logged at step s is the one its update used: the reference formula at t = s - 1.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h}
    assert sorted(logged) == [1, 2, 3, 4]
    for step, lr in logged.items():
        assert lr == pytest.approx(poly_lr(step - 1, 0.01, 4), rel=1e-9)

    # Checkpoint + processor reload; the card carries licence, tags and the model-index.
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert model.config.num_labels == 6 and model.config.base_channels == 4
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "cc-by-nc-sa-4.0" and header["library_name"] == "transformers"
    assert {"image-segmentation", "pathology", "pannuke"} <= set(header["tags"])
    card_metrics = {m["type"]: m["value"] for m in header["model-index"][0]["results"][0]["metrics"]}
    assert card_metrics["mean_iou"] == pytest.approx(round(100 * metrics["eval_mean_iou"], 2))
    assert "Citation" in card and "Gamper" in card

    picture = Image.open(out / "predictions.png")
    assert picture.width == 3 * 256 and picture.height > 2 * 256


def test_a_few_steps_lower_the_loss(raw_root):
    torch.set_num_threads(1)
    splits = load_splits(raw_root, "reference")
    dataset = with_transform(splits["train"], 32, train=True, augment=False)
    batch = collate_segmentation([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    config = UNetFCNConfig(
        base_channels=4,
        num_stages=2,
        encoder_num_convs=[2, 2],
        decoder_num_convs=[2],
        strides=[1, 1],
        downsamples=[True],
        encoder_dilations=[1, 1],
        decoder_dilations=[1],
        head_dropout=0.0,
    )
    model = UNetFCNForSemanticSegmentation(config)
    optimizer = build_sgd(model.parameters(), lr=0.05)
    losses = []
    for _ in range(12):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses


def test_wrong_label_count_checkpoint_is_a_clear_error(raw_root, tmp_path, capsys):
    from pannuke_hf.training.run import main

    config = UNetFCNConfig(base_channels=4, num_stages=2, encoder_num_convs=[2, 2], decoder_num_convs=[2],
                           strides=[1, 1], downsamples=[True], encoder_dilations=[1, 1], decoder_dilations=[1],
                           num_labels=3)  # fmt: skip
    UNetFCNForSemanticSegmentation(config).save_pretrained(tmp_path / "three_labels")
    status = main(
        tiny_argv(raw_root, tmp_path / "out", "--model_name_or_path", str(tmp_path / "three_labels"))
    )
    assert status == 1  # a model that does not fit the data (pannuke_hf.errors)
    err = capsys.readouterr().err
    assert "3 labels" in err and "PanNuke has 6" in err
