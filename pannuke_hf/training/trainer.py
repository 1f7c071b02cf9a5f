"""``PanNukeTrainer``: ``transformers.Trainer`` with the reference optimizer, schedule and model card."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from .schedule import PolyLRScheduler, build_sgd

logger = logging.getLogger(__name__)

#: Batch entries used only by the metrics (ground-truth nuclei), never passed to the model.
METRIC_ONLY_INPUTS: tuple[str, ...] = ("instance_mask", "tissue")


@contextlib.contextmanager
def _keep_last_batch(args: Any) -> Iterator[None]:
    """``args.dataloader_drop_last`` off for the duration.

    The reference configurations drop the last incomplete *training* batch (fixed batches of 16,
    one compiled shape), but ``Trainer`` applies the flag to evaluation loaders too, which would
    leave the last ``len(split) % batch_size`` images of a split unscored, without a word.
    """
    drop_last = args.dataloader_drop_last
    args.dataloader_drop_last = False
    try:
        yield
    finally:
        args.dataloader_drop_last = drop_last


class PanNukeTrainer(Trainer):
    """``Trainer`` whose optimizer and LR schedule are the reference's, fast on CUDA devices.

    On a CUDA device (unless the arguments say otherwise): channels-last model and image batches
    (``--channels_last``), cuDNN autotuning (``--cudnn_benchmark``), a fused SGD step; together with
    the arguments' defaults (pinned memory, non-blocking copies, persistent workers, no per-step
    NaN check) and ``--bf16 true`` / ``--torch_compile true`` this trains at the model's own speed.

    Built in :meth:`create_optimizer` / :meth:`create_scheduler` (not passed as
    ``optimizers=(...)``) so that ``Trainer`` restores their state from ``optimizer.pt`` /
    ``scheduler.pt`` when a run resumes from a checkpoint.

    Extra keyword arguments:
        model_card_info: what :meth:`create_model_card` writes into ``README.md`` (see
            :func:`pannuke_hf.training.model_card.write_model_card`); set or updated by the
            training script once evaluation results exist.
    """

    def __init__(self, *args: Any, model_card_info: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_card_info: dict[str, Any] = dict(model_card_info or {})
        if self.args.label_names is None:
            # Only the batch's semantic labels go to the metrics (also for models whose forward
            # names other targets "*labels*").
            self.label_names = ["labels"]
        self.channels_last = self._configure_device_speed()

    def _configure_device_speed(self) -> bool:
        """The CUDA speed settings (``--channels_last``, ``--cudnn_benchmark``); nothing changes on the CPU.

        Returns:
            Whether image batches are to be made channels-last (see :meth:`_prepare_inputs`).
        """
        on_cuda = self.args.device.type == "cuda"
        benchmark = getattr(self.args, "cudnn_benchmark", None)
        if on_cuda and (benchmark is None or benchmark):
            # Input sizes are fixed during a run: the algorithm search pays for itself after a few steps.
            torch.backends.cudnn.benchmark = True
        channels_last = getattr(self.args, "channels_last", None)
        channels_last = on_cuda if channels_last is None else bool(channels_last)
        if channels_last:
            # In place (module._apply), before accelerate wraps or compiles the model, so the
            # optimizer, checkpoints and evaluation all see the same parameters.
            self.model.to(memory_format=torch.channels_last)
        return channels_last

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Trainer's device placement, then channels-last image batches when the model is channels-last."""
        inputs = super()._prepare_inputs(inputs)
        pixel_values = inputs.get("pixel_values") if isinstance(inputs, Mapping) else None
        if self.channels_last and isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
            inputs["pixel_values"] = pixel_values.contiguous(memory_format=torch.channels_last)
        return inputs

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        """Trainer's loader over every image: ``dataloader_drop_last`` applies to training batches only."""
        with _keep_last_batch(self.args):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset: Any) -> torch.utils.data.DataLoader:
        """Trainer's loader over every image (see :meth:`get_eval_dataloader`)."""
        with _keep_last_batch(self.args):
            return super().get_test_dataloader(test_dataset)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """Trainer's loop, from empty metric state: an interrupted evaluation leaves partial counts."""
        from ..metrics.trainer import reset_metric_state

        reset_metric_state(self.compute_metrics, self.preprocess_logits_for_metrics)
        return super().evaluation_loop(*args, **kwargs)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """Trainer's step, keeping the batch's ground-truth nuclei away from the model.

        ``instance_mask`` (and ``tissue``), when the evaluation collate carries them, are not model
        inputs: they are taken out of the batch and returned with the labels as
        ``(labels, instance_mask[, tissue])`` for nucleus-level metrics.
        """
        extra = [name for name in METRIC_ONLY_INPUTS if name in inputs]
        if not extra:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = dict(inputs)
        kept = [self._prepare_input(inputs.pop(name)) for name in extra]
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if labels is not None:
            labels = (labels, *kept)
        return loss, logits, labels

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay on every parameter (``--optimizer sgd``, the default)."""
        if getattr(self.args, "optimizer", "sgd") != "sgd":
            return super().create_optimizer(model)
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            parameters = [p for p in opt_model.parameters() if p.requires_grad]
            # One fused kernel for the whole update on the GPU (the same arithmetic as the default
            # multi-tensor path); the CPU keeps torch's default implementation.
            fused = bool(parameters) and all(p.device.type == "cuda" for p in parameters)
            self.optimizer = build_sgd(
                parameters,
                lr=self.args.learning_rate,
                momentum=self.args.momentum,
                weight_decay=self.args.weight_decay,
                fused=fused or None,
            )
        return self.optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """The reference poly schedule over ``num_training_steps`` (``--lr_schedule poly``, the default)."""
        if getattr(self.args, "lr_schedule", "poly") != "poly":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = PolyLRScheduler(
                self.optimizer if optimizer is None else optimizer,
                total_steps=num_training_steps,
                min_lr=self.args.min_lr,
                power=self.args.poly_power,
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Write the PanNuke model card (``README.md``) into ``output_dir`` (main process only)."""
        if not self.is_world_process_zero():
            return
        from .model_card import write_model_card

        write_model_card(Path(self.args.output_dir), self.args, **self.model_card_info)


def convert_to_sync_batchnorm(
    model: torch.nn.Module, world_size: int, device_type: str = "cuda"
) -> torch.nn.Module:
    """Replace every BatchNorm by SyncBatchNorm when ``world_size > 1`` (``--sync_bn``).

    Batch statistics are then computed over the global batch, as the reference's multi-GPU
    ``SyncBN`` configs do. With one process the model is returned unchanged.

    Args:
        model: the model.
        world_size: number of training processes.
        device_type: the training device type ("cuda", "cpu", ...).

    Returns:
        The (possibly converted) model; state-dict keys are unchanged.

    Raises:
        ValueError: several CPU processes (torch's SyncBatchNorm runs only on accelerators).
    """
    if world_size <= 1:
        return model
    if device_type == "cpu":
        raise ValueError(
            "--sync_bn needs GPU (or XPU) processes: torch's SyncBatchNorm does not run on the CPU; "
            "drop --sync_bn for multi-process CPU runs"
        )
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    count = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    logger.info("sync_bn: %d BatchNorm layers synchronised across %d processes", count, world_size)
    return converted
