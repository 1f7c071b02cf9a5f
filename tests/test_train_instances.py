"""``train.py --instance_head hv`` end to end, and nucleus-level scores in evaluation (tiny runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoConfig

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.data.splits import reference_split_ids, reference_split_sizes
from pannuke_hf.metrics.trainer import (
    InstancePredictions,
    SegmentationAndInstanceMetrics,
    make_compute_metrics,
)
from pannuke_hf.training.run import run


def tiny_argv(data_dir, out_dir, *extra: str) -> list[str]:
    """A seconds-long run: 32 px inputs, a 4-channel 2-stage UNet, 2 steps."""
    return [
        "--data_dir", str(data_dir), "--output_dir", str(out_dir),
        "--image_size", "32", "--base_channels", "4", "--num_stages", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--learning_rate", "0.01", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--report_to", "none", "--seed", "0", "--torch_num_threads", "1",
        *extra,
    ]  # fmt: skip


NUCLEUS_KEYS = {"eval_mPQ", "eval_bPQ", "eval_F1_detection", "eval_mPQ_image", "eval_bPQ_image"}


def test_train_with_the_hv_head_reports_nucleus_scores(raw_root, raw_fold_sizes, tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny_argv(raw_root, out, "--instance_head", "hv"))
    n_val = reference_split_sizes(sum(raw_fold_sizes.values()))[1]
    assert metrics["eval_num_images"] == n_val
    assert NUCLEUS_KEYS <= set(metrics)
    for key in NUCLEUS_KEYS:
        assert 0.0 <= metrics[key] <= 1.0 or np.isnan(metrics[key]), key
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    assert AutoConfig.from_pretrained(out).instance_head == "hv"
    # the headline mPQ / bPQ average per tissue: every validation patch carries its own tissue
    types = {
        f"fold{k}_{i:04d}": str(t)
        for k in (1, 2, 3)
        for i, t in enumerate(np.load(raw_root / f"Fold {k}" / "images" / f"fold{k}" / "types.npy"))
    }
    _, val_ids = reference_split_ids(sorted(types))
    assert metrics["eval_num_tissues"] == len({types[i] for i in val_ids}) > 1

    results = json.loads((out / "results.json").read_text())
    assert results["nuclei"]["bPQ"] == pytest.approx(metrics["eval_bPQ"])
    assert results["nuclei"]["mPQ"] == pytest.approx(metrics["eval_mPQ"])
    assert results["nuclei"]["F1_d"] == pytest.approx(metrics["eval_F1_detection"])
    assert set(results["nuclei"]["per_class"]) == {
        "neoplastic",
        "inflammatory",
        "connective",
        "dead",
        "epithelial",
    }
    markdown = (out / "results.md").read_text()
    assert (
        "| mIoU (%) |" in markdown
        and "## Nuclei" in markdown
        and "| mPQ (%) | bPQ (%) | F1_d (%) |" in markdown
    )

    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    card = {m["name"]: m["value"] for r in header["model-index"][0]["results"] for m in r["metrics"]}
    assert card["bPQ"] == pytest.approx(round(100 * metrics["eval_bPQ"], 2))
    assert card["mPQ"] == pytest.approx(round(100 * metrics["eval_mPQ"], 2))
    assert {"mIoU", "mPQ", "bPQ", "F1_d"} <= set(card)


def test_plain_model_scores_nuclei_only_when_asked(raw_root, tmp_path):
    plain = run(tiny_argv(raw_root, tmp_path / "plain"))
    assert not NUCLEUS_KEYS & set(plain)
    assert "nuclei" not in json.loads((tmp_path / "plain" / "results.json").read_text())
    asked = run(
        tiny_argv(
            raw_root, tmp_path / "asked", "--instance_metrics", "true", "--instance_postprocess", "components"
        )
    )
    assert NUCLEUS_KEYS <= set(asked)
    # Same seed, same model: the pixel metrics do not depend on the nucleus scoring.
    assert asked["eval_mean_iou"] == pytest.approx(plain["eval_mean_iou"])


def _touching_discs() -> np.ndarray:
    yy, xx = np.indices((40, 40))
    truth = np.zeros((40, 40), dtype=np.int64)
    truth[(yy - 20) ** 2 + (xx - 12) ** 2 <= 36] = 1
    truth[(yy - 20) ** 2 + (xx - 23) ** 2 <= 36] = 2  # touches nucleus 1
    truth[(yy - 5) ** 2 + (xx - 33) ** 2 <= 9] = 3
    return truth


def test_instance_metrics_score_post_processed_batches():
    """Logits that reproduce the truth's classes: the watershed finds the two touching discs."""
    truth = _touching_discs()
    semantic = np.where(truth > 0, 2, 0)  # one class: two touching nuclei are one blob
    semantic[truth == 3] = 4
    logits = torch.from_numpy(np.eye(6)[semantic].transpose(2, 0, 1) * 10.0).float()[None]
    labels = torch.from_numpy(semantic)[None]
    metric = SegmentationAndInstanceMetrics(make_compute_metrics(6, 255))
    scores = {}
    for mode in ("components", "watershed"):
        predictions = InstancePredictions(mode, min_size=5)(logits, (labels, torch.from_numpy(truth)[None]))
        assert predictions[1].dtype == torch.int32 and predictions[1].shape == (1, 40, 40)
        scores[mode] = metric((predictions, (labels, torch.from_numpy(truth)[None])), compute_result=True)
    assert scores["watershed"]["bPQ"] > 0.9  # all three nuclei found
    assert scores["watershed"]["F1_detection"] == pytest.approx(1.0)
    # Components merge the touching pair into one blob, which matches the larger disc (IoU > 0.5):
    # TP 2 (with IoUs iou and 1), FN 1, FP 0 -> DQ = 2 / (2 + 0.5), SQ = (iou + 1) / 2.
    areas = np.bincount(truth.ravel())
    iou = max(areas[1], areas[2]) / (areas[1] + areas[2])
    assert iou > 0.5
    assert scores["components"]["bPQ"] == pytest.approx(0.8 * (iou + 1) / 2, abs=1e-6)
    assert scores["components"]["mean_iou"] == pytest.approx(1.0)


def test_hv_post_processing_needs_the_head():
    with pytest.raises(ValueError, match="instance_head='hv'"):
        InstancePredictions("hv")(torch.zeros(1, 6, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="one of"):
        InstancePredictions("stardist")
