"""Evaluation scores every image of a split, also with ``dataloader_drop_last`` (set by the reference configs)."""

from __future__ import annotations

import pytest
import torch
from _models import tiny_unet_fcn
from test_stock_trainer import expected_scores, samples
from transformers import TrainingArguments

from pannuke_hf.metrics import make_compute_metrics, preprocess_logits_for_metrics
from pannuke_hf.training.trainer import PanNukeTrainer


@pytest.mark.parametrize("batch_eval_metrics", [True, False])
def test_drop_last_leaves_no_evaluation_image_out(tmp_path, batch_eval_metrics):
    torch.manual_seed(0)
    model = tiny_unet_fcn().eval()
    rows = samples(count=7)  # 7 images in batches of 3: the last batch holds one image
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=3,
        dataloader_drop_last=True,
        batch_eval_metrics=batch_eval_metrics,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = PanNukeTrainer(
        model=model,
        args=args,
        eval_dataset=rows,
        compute_metrics=make_compute_metrics(6, 255),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    scores = trainer.evaluate()
    expected = expected_scores(model, rows, batch_size=3)  # all 7 images
    assert scores["eval_mean_iou"] == pytest.approx(expected["eval_mean_iou"], abs=1e-9)
    assert scores["eval_overall_accuracy"] == pytest.approx(expected["eval_overall_accuracy"], abs=1e-9)
    assert len(trainer.get_test_dataloader(rows)) == 3  # test loaders keep the last batch too
    assert args.dataloader_drop_last  # training batches still drop it
