"""Streaming metric state starts empty at every evaluation, also after an interrupted one (issue 18, item 12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")


class TinySegmenter(torch.nn.Module):
    """One conv: (B, 3, 8, 8) -> (B, 6, 8, 8) logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, kernel_size=3, padding=1)

    def forward(self, pixel_values, labels=None):
        logits = self.conv(pixel_values)
        loss = None if labels is None else F.cross_entropy(logits, labels, ignore_index=255)
        return {"loss": loss, "logits": logits}


class InterruptAtStep:
    """A callback that raises KeyboardInterrupt at prediction step ``at`` once (after earlier batches counted)."""

    def __init__(self, at: int) -> None:
        from transformers import TrainerCallback

        self.at, self.steps, self.armed = at, 0, True
        outer = self

        class Callback(TrainerCallback):
            def on_prediction_step(self, args, state, control, **kwargs):
                outer.steps += 1
                if outer.armed and outer.steps == outer.at:
                    outer.armed = False
                    raise KeyboardInterrupt

        self.callback = Callback()


def samples(count: int = 7) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(5)
    return [
        {
            "pixel_values": torch.from_numpy(rng.normal(size=(3, 8, 8)).astype(np.float32)),
            "labels": torch.from_numpy(rng.choice([0, 1, 2, 3, 4, 5], size=(8, 8))),
        }
        for _ in range(count)
    ]


def make_trainer(tmp_path, callbacks=()):
    from transformers import TrainingArguments

    from pannuke_hf.training.evaluation import metric_functions
    from pannuke_hf.training.trainer import PanNukeTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=2,
        batch_eval_metrics=True,
        report_to=[],
        use_cpu=True,
    )
    return PanNukeTrainer(
        model=TinySegmenter().eval(),
        args=args,
        eval_dataset=samples(),
        callbacks=list(callbacks),
        **metric_functions(),
    )


def scores(metrics: dict) -> dict:
    timings = ("runtime", "per_second", "_time")
    return {k: v for k, v in metrics.items() if k.startswith("eval_") and not any(t in k for t in timings)}


def test_evaluation_after_a_keyboard_interrupt_counts_only_its_own_batches(tmp_path):
    clean = scores(make_trainer(tmp_path / "clean").evaluate())
    interrupter = InterruptAtStep(at=3)  # batches 1 and 2 are counted, then Ctrl+C
    trainer = make_trainer(tmp_path / "interrupted", [interrupter.callback])
    with pytest.raises(KeyboardInterrupt):
        trainer.evaluate()
    assert trainer.compute_metrics.count == 4  # the partial state is there ...
    again = scores(trainer.evaluate())  # ... and must not leak into the next evaluation
    assert again["eval_num_images"] == 7 == clean["eval_num_images"]
    assert again.keys() == clean.keys()
    for key, value in clean.items():
        assert again[key] == pytest.approx(value, nan_ok=True), key


def test_reset_metric_state_empties_a_plain_metric():
    from pannuke_hf.metrics import make_compute_metrics, reset_metric_state

    metric = make_compute_metrics(6)
    batch = samples(2)
    labels = torch.stack([s["labels"] for s in batch])
    metric((labels, labels), compute_result=False)  # a perfect batch, never finished
    reset_metric_state(metric, object())  # objects without reset() are skipped
    wrong = (labels + 1) % 6
    out = metric((wrong, labels), compute_result=True)
    assert out["overall_accuracy"] == 0.0  # only the wrong batch was counted
