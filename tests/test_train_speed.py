"""The GPU speed settings of the training path, as far as the CPU can check them (issue 16).

On CUDA ``PanNukeTrainer`` makes the model and the image batches channels-last, turns on cuDNN
autotuning and builds a fused SGD; the arguments default to no per-step NaN check, persistent
workers and non-blocking copies. The CPU path must stay as it was; the same code paths run here
with ``--channels_last true`` / ``--bf16 true`` / ``--torch_compile true``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _models import tiny_unet_fcn
from test_train import tiny_argv
from torch._dynamo.utils import counters
from transformers import AutoModelForSemanticSegmentation

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.training.arguments import PanNukeTrainingArguments, parse_arguments
from pannuke_hf.training.run import DEMO_CONFIG, run
from pannuke_hf.training.trainer import PanNukeTrainer


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainer_for(path, **overrides) -> PanNukeTrainer:
    args = PanNukeTrainingArguments(output_dir=str(path), use_cpu=True, report_to="none", **overrides)
    model = tiny_unet_fcn(seed=0)
    model.decode_head.dropout.p = 0.0  # deterministic steps
    return PanNukeTrainer(model=model, args=args)


def a_batch(size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "pixel_values": torch.randn(2, 3, size, size, generator=generator),
        "labels": torch.randint(0, 6, (2, size, size), generator=generator),
    }


def is_channels_last(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def test_the_cpu_path_is_unchanged_by_default(tmp_path):
    benchmark = torch.backends.cudnn.benchmark
    trainer = trainer_for(tmp_path)
    assert trainer.channels_last is False
    assert all(p.is_contiguous() for p in trainer.model.parameters())
    assert not is_channels_last(trainer.model.unet.encoder[0].block.convs[0].conv.weight)
    assert torch.backends.cudnn.benchmark == benchmark
    assert trainer._prepare_inputs(a_batch())["pixel_values"].is_contiguous()
    trainer.create_optimizer()
    assert not trainer.optimizer.defaults.get("fused")  # torch's default SGD on the CPU


def test_channels_last_trains_exactly_as_contiguous(tmp_path):
    """--channels_last true (the CUDA default) changes the layout of weights and batches, not the step."""
    steps = []
    for channels_last in (False, True):
        trainer = trainer_for(tmp_path / str(channels_last), channels_last=channels_last)
        inputs = trainer._prepare_inputs(a_batch())
        weight = trainer.model.unet.encoder[0].block.convs[0].conv.weight
        assert is_channels_last(inputs["pixel_values"]) == channels_last
        assert is_channels_last(weight) == channels_last
        loss = trainer.compute_loss(trainer.model.train(), inputs)
        loss.backward()
        steps.append((loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = steps
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grad, grads_b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_channels_last_model_saves_and_reloads_exactly(tmp_path):
    trainer = trainer_for(tmp_path, channels_last=True)
    trainer.save_model(str(tmp_path / "checkpoint"))
    loaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "checkpoint")
    saved = trainer.model.state_dict()
    assert set(saved) == set(loaded.state_dict())
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_speed_defaults_of_the_arguments(tmp_path):
    args = PanNukeTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2, report_to="none")
    assert args.logging_nan_inf_filter is False  # no read-back of the loss after every step
    assert args.dataloader_persistent_workers is True
    assert args.dataloader_pin_memory is True and args.accelerator_config.non_blocking is True
    assert args.channels_last is None and args.cudnn_benchmark is None  # = on for CUDA devices
    # torch's DataLoader refuses persistent workers without workers
    args = PanNukeTrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=0, report_to="none")
    assert args.dataloader_persistent_workers is False
    # the command line gives booleans, never the (truthy) string "false"
    _, _, args = parse_arguments(
        ["--output_dir", str(tmp_path), "--channels_last", "false", "--cudnn_benchmark", "false"]
    )
    assert args.channels_last is False and args.cudnn_benchmark is False
    # --use_cpu: no pinned memory, hence no non-blocking copies
    args = PanNukeTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.dataloader_pin_memory is False and args.accelerator_config.non_blocking is False


@pytest.mark.slow
@pytest.mark.parametrize("head", ["plain", "hv"])
def test_torch_compile_trains_and_evaluates(raw_root, tmp_path, head):
    """--torch_compile true through Trainer (the aot_eager backend: the graphs dynamo and AOT autograd
    capture, forward + backward, without generating code), with and without the hv head."""
    out = tmp_path / "run"
    extra = ["--torch_compile", "true", "--torch_compile_backend", "aot_eager", "--max_steps", "2",
             "--channels_last", "true", "--dataloader_drop_last", "true"]  # fmt: skip
    if head == "hv":
        extra += ["--instance_head", "hv"]
    torch._dynamo.reset()
    counters.clear()
    metrics = run(tiny_argv(raw_root, out, *extra))
    assert counters["stats"]["unique_graphs"] >= 1  # the model was compiled, not run eagerly
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert metrics["eval_num_images"] > 0 and math.isfinite(metrics["eval_loss"])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if head == "hv":
        assert "eval_bPQ" in metrics  # the hv head's nuclei were scored


@pytest.mark.slow
def test_bf16_and_fp32_runs_end_within_one_miou_point(tmp_path, monkeypatch):
    """The same configuration (the demo's, shortened) in fp32 and with bf16 autocast (CPU)."""
    monkeypatch.setenv("PANNUKE_HF_DEMO_CACHE", str(tmp_path / "demo-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    scores = {}
    for bf16 in ("false", "true"):
        metrics = run(
            [str(DEMO_CONFIG), "--bf16", bf16, "--max_steps", "300", "--output_dir", str(tmp_path / bf16),
             "--dataset_cache_dir", str(tmp_path / "datasets-cache"), "--prediction_figure_samples", "0",
             "--eval_strategy", "no", "--save_strategy", "no"]
        )  # fmt: skip
        scores[bf16] = metrics["eval_mean_iou"]
    assert scores["false"] > 0.5  # both runs learned something
    assert abs(scores["true"] - scores["false"]) <= 0.01, scores
