"""End-to-end training on generated raw data with a tiny UNet-FCN (in process)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from PIL import Image
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


def test_training_run_end_to_end(raw_root, raw_fold_sizes, tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny_argv(raw_root, out, "--prediction_figure_samples", "2"))

    n_val = reference_split_sizes(sum(raw_fold_sizes.values()))[1]
    assert metrics["eval_num_images"] == n_val  # every validation image scored once
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0

    results = json.loads((out / "results.json").read_text())
    assert results["split"] == "validation" and results["num_images"] == n_val
    assert results["summary"]["mIoU"] == pytest.approx(metrics["eval_mean_iou"])
    assert [c["name"] for c in results["per_class"]][:2] == ["background", "neoplastic"]
    assert "| mIoU | mDice |" in (out / "results.md").read_text()

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
    assert status == 2
    err = capsys.readouterr().err
    assert "3 labels" in err and "PanNuke has 6" in err
