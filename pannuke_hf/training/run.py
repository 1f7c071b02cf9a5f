"""The training script: ``accelerate launch train.py [config.yaml] [--flags]`` or ``pannuke-hf train``.

:func:`run` reads top to bottom: arguments -> data -> model -> transforms -> Trainer -> train ->
evaluate -> results -> push. Without a configuration file it is the built-in demo (``configs/demo.yaml``),
which flags given alone override.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, TrainerCallback, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..constants import ID2LABEL, NUM_LABELS
from ..data.splits import training_data_record
from ..errors import EXIT_FAILURE, EXIT_USAGE, UsageError, is_hub_error, traceback_requested
from .arguments import DataArguments, ModelArguments, PanNukeTrainingArguments, parse_arguments
from .data import (
    AugmentationEpochCallback,
    collate_segmentation,
    ensure_synthetic_data,
    load_splits,
    take_first,
    with_transform,
)
from .evaluation import check_num_labels, evaluate_and_report, metric_functions
from .trainer import PanNukeTrainer, convert_to_sync_batchnorm

logger = logging.getLogger("pannuke_hf.train")

#: The configuration used when the script runs without arguments.
DEMO_CONFIG: Path = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
#: Values of ``--resume_from_checkpoint`` that mean "the last checkpoint in output_dir".
LATEST_CHECKPOINT_WORDS: frozenset[str] = frozenset({"latest", "last", "true", "True", "1", "yes"})


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _has_flag(argv: Sequence[str], name: str) -> bool:
    return any(arg == name or arg.startswith(name + "=") for arg in argv)


def default_argv(argv: Sequence[str] | None, flags_override_demo: bool = True) -> list[str]:
    """The arguments to parse: ``argv`` (default ``sys.argv[1:]``) with the demo config by default.

    Without a configuration file the demo configuration (``configs/demo.yaml``) supplies the
    defaults: no arguments at all is the demo, and flags alone override it (the command line,
    ``flags_override_demo=True``), so ``python train.py --torch_num_threads 1`` is the demo on one
    thread. ``--data_dir`` given without ``--synthetic_data`` means data already there: it then
    implies ``--synthetic_data false`` (the demo never generates into a folder named for real
    data). With ``flags_override_demo=False`` (programmatic callers such as ``pannuke-hf
    protocol``) flags alone are parsed as they are, over the arguments' own defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (not argv[0].startswith("-") or not flags_override_demo):
        return argv
    if any(arg in ("-h", "--help") for arg in argv):
        # --help lists the arguments' own defaults (the reference's), not the demo's; its text
        # says that the demo configuration applies when no configuration file is given.
        return argv
    if not DEMO_CONFIG.is_file():
        raise FileNotFoundError(
            f"no configuration file given and the demo configuration {DEMO_CONFIG} is missing"
        )
    if _has_flag(argv, "--data_dir") and not _has_flag(argv, "--synthetic_data"):
        argv += ["--synthetic_data", "false"]
    return [str(DEMO_CONFIG), *argv]


def setup_logging(training_args: PanNukeTrainingArguments) -> None:
    """Log to stderr; INFO on the main process, warnings elsewhere."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stderr
    )
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(logging.WARNING)


def keep_token_out_of_files(training_args: PanNukeTrainingArguments) -> None:
    """Move ``--hub_token`` into the process environment so it is never pickled or logged.

    ``Trainer`` saves the whole ``TrainingArguments`` in ``training_args.bin`` (and checkpoints);
    a token left there would be pushed with the model. ``huggingface_hub`` reads ``HF_TOKEN``
    from the environment of this process instead.
    """
    if training_args.hub_token:
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def resolve_data_dir(data_args: DataArguments, training_args: PanNukeTrainingArguments) -> Path:
    """The raw folds folder; generated first (main process) with ``--synthetic_data``."""
    if data_args.synthetic_data:
        with training_args.main_process_first(desc="generating data"):
            return ensure_synthetic_data(
                data_args.data_dir,
                data_args.synthetic_patches_per_fold,
                data_args.synthetic_seed,
                touching=data_args.synthetic_touching,
            )
    if not data_args.data_dir:
        raise UsageError(
            "no data: pass --data_dir with the raw PanNuke folds (see `pannuke-hf prepare`), "
            "or --synthetic_data true for generated data"
        )
    return Path(data_args.data_dir)


def build_model(
    model_args: ModelArguments, image_size: int
) -> tuple[transformers.PreTrainedModel, transformers.BaseImageProcessor]:
    """A fresh UNet-FCN (``--base_channels``, ``--num_stages``, ``--instance_head``) or a checkpoint, with
    its processor (``--instance_head hv`` on a checkpoint without the head adds it, freshly initialised).

    Args:
        model_args: model arguments.
        image_size: model input side (must be a multiple of the model's output stride).

    Returns:
        ``(model, image_processor)``; the processor resizes to ``image_size``.
    """
    from ..models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation, UNetFCNImageProcessor

    size = {"height": image_size, "width": image_size}
    head = {}
    if model_args.instance_head:
        head["instance_head"] = model_args.instance_head
    if model_args.hv_msge_loss_weight is not None:
        head["hv_msge_loss_weight"] = model_args.hv_msge_loss_weight
    if model_args.model_name_or_path:
        source = model_args.model_name_or_path
        if model_args.ignore_mismatched_sizes:
            model = AutoModelForSemanticSegmentation.from_pretrained(
                source, num_labels=NUM_LABELS, id2label=ID2LABEL, ignore_mismatched_sizes=True, **head
            )
        else:
            model = AutoModelForSemanticSegmentation.from_pretrained(source, **head)
        check_num_labels(model.config, source)
        try:
            processor = AutoImageProcessor.from_pretrained(source)
            processor.size = size
        except (OSError, ValueError):
            processor = UNetFCNImageProcessor(size=size)
    else:
        config = UNetFCNConfig(
            base_channels=model_args.base_channels,
            num_stages=model_args.num_stages,
            classifier_init_std=model_args.classifier_init_std,
            num_labels=NUM_LABELS,
            id2label=ID2LABEL,
            **head,
        )
        model = UNetFCNForSemanticSegmentation(config)
        processor = UNetFCNImageProcessor(size=size)
    stride = getattr(model.config, "output_stride", 1)
    if image_size % stride:
        raise ValueError(f"image_size {image_size} must be a multiple of the model's output stride {stride}")
    return model, processor


def resolve_resume(value: str | bool | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``latest``/``true`` for the last one in ``output_dir``."""
    if value is None or value is False or value == "":
        return None
    if value is True or str(value) in LATEST_CHECKPOINT_WORDS:
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {value}: no checkpoint-* folder in {output_dir!r}"
            )
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"--resume_from_checkpoint: checkpoint folder {value!r} does not exist")
    return str(value)


def save_figure(
    trainer: PanNukeTrainer, raw_split: Any, count: int, size: int, mean: Any, std: Any, path: Path
) -> Path:
    """PNG of ``count`` examples of ``raw_split``: image | ground truth | prediction."""
    import numpy as np

    from .figures import predict_label_maps, save_prediction_figure

    rows = raw_split.select(range(min(count, len(raw_split)))).select_columns(["image", "semantic_mask"])
    images = [row["image"] for row in rows]
    references = [np.asarray(row["semantic_mask"]) for row in rows]
    predictions = predict_label_maps(trainer.model, images, size, mean, std)
    return save_prediction_figure(images, references, predictions, path)


# ---------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict[str, Any]:
    """Train and/or evaluate a UNet-FCN on PanNuke; see ``python train.py --help``.

    Args:
        argv: ``[config.yaml|json] [--flags]`` (default ``sys.argv[1:]``; empty = the demo; the
            command line's :func:`main` also lets flags alone override the demo, see
            :func:`default_argv`).
        callbacks: extra ``TrainerCallback`` instances.

    Returns:
        The final evaluation metrics (empty when ``--do_eval false``).
    """
    # 1. Arguments
    data_args, model_args, training_args = parse_arguments(default_argv(argv, flags_override_demo=False))
    keep_token_out_of_files(training_args)
    setup_logging(training_args)
    if training_args.torch_num_threads:
        torch.set_num_threads(training_args.torch_num_threads)
    logger.info("world size %d, device %s", training_args.world_size, training_args.device)
    set_seed(training_args.seed)

    # 2. Data: raw folds -> Arrow dataset (built once, main process first) -> splits
    data_dir = resolve_data_dir(data_args, training_args)
    with training_args.main_process_first(desc="building the dataset"):
        splits = load_splits(
            data_dir,
            data_args.split_scheme,
            data_args.dataset_cache_dir,
            data_args.build_num_proc,
            void_label=data_args.void_label,
        )
    if data_args.eval_split not in splits:
        raise UsageError(
            f"--eval_split {data_args.eval_split!r} does not exist for --split_scheme "
            f"{data_args.split_scheme!r} (splits: {list(splits)})"
        )

    # 3. Model and image processor
    model, processor = build_model(model_args, data_args.image_size)
    # saved in config.json: `pannuke-hf evaluate` defaults to this scheme and refuses its training split
    model.config.training_data = training_data_record(
        data_args.split_scheme, data_args.void_label, data_args.synthetic_data
    )
    if training_args.sync_bn:
        model = convert_to_sync_batchnorm(model, training_args.world_size, training_args.device.type)

    # 4. Lazy transforms (decode -> resize -> flip + photometric distortion -> normalise); with the
    #    distance-map head, its targets from the transformed instance map; with nucleus-level
    #    metrics, the evaluation rows keep their instance map
    size, mean, std = data_args.image_size, processor.image_mean, processor.image_std
    has_instance_head = getattr(model.config, "instance_head", None) is not None
    instance_metrics = (
        has_instance_head if training_args.instance_metrics is None else training_args.instance_metrics
    )
    train_dataset = with_transform(
        take_first(splits["train"], data_args.max_train_samples),
        size,
        train=True,
        augment=data_args.augment,
        mean=mean,
        std=std,
        seed=training_args.seed,
        instance_targets=has_instance_head,
    )
    raw_eval = take_first(splits[data_args.eval_split], data_args.max_eval_samples)
    eval_dataset = with_transform(
        raw_eval, size, train=False, mean=mean, std=std, keep_instances=instance_metrics
    )

    # 5. Trainer with the reference optimizer / schedule and streaming metrics
    model_card_info = {
        "split": data_args.eval_split,
        "split_scheme": data_args.split_scheme,
        "image_size": size,
        "synthetic_data": data_args.synthetic_data,
        "model_config": {
            "base_channels": model.config.base_channels,
            "num_stages": model.config.num_stages,
            **({"instance_head": model.config.instance_head} if has_instance_head else {}),
        },
    }
    trainer = PanNukeTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset,
        data_collator=collate_segmentation,
        processing_class=processor,
        **metric_functions(
            instance_metrics, training_args.instance_postprocess, training_args.instance_min_size
        ),
        # the augmentation draws are keyed by (epoch, row): tell the dataset each epoch
        callbacks=[*(callbacks or []), AugmentationEpochCallback(train_dataset)],
        model_card_info=model_card_info,
    )

    # 6. Train (resuming restores model, optimizer, schedule, RNG and step)
    if training_args.do_train:
        resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
        train_result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model()
        trainer.save_state()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)

    # 7. Evaluate, print and save the results table (+ the prediction picture)
    metrics: dict[str, Any] = {}
    if training_args.do_eval:
        extra = {
            "split_scheme": data_args.split_scheme,
            "image_size": size,
            "synthetic_data": data_args.synthetic_data,
        }
        metrics = evaluate_and_report(
            trainer, eval_dataset, data_args.eval_split, training_args.output_dir, extra
        )
        if training_args.prediction_figure_samples > 0 and trainer.is_world_process_zero():
            path = save_figure(
                trainer,
                raw_eval,
                training_args.prediction_figure_samples,
                size,
                mean,
                std,
                Path(training_args.output_dir) / "predictions.png",
            )
            logger.info("saved %s", path)
        model_card_info["results"] = metrics.get("results")
        model_card_info["results_markdown"] = metrics.get("results_markdown")
        trainer.model_card_info.update(model_card_info)

    # 8. Model card; push model + processor + card to the Hub
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="pannuke-hf: training run")
    elif trainer.is_world_process_zero():
        trainer.create_model_card()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run, print clear errors for bad input, return an exit status.

    Exit codes (see :mod:`pannuke_hf.errors`): 0 success, 1 the run failed (data, model,
    checkpoint), 2 the command line or configuration file cannot be used.
    """
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train.py"
    try:
        argv = default_argv(argv)
        try:
            parse_arguments(argv)  # the command line first: its errors are usage errors
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error)) from error
        run(argv)
    except UsageError as error:
        if traceback_requested():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError, KeyError) as error:
        if traceback_requested():
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:
        if traceback_requested() or not is_hub_error(error):
            raise
        # --push_to_hub: the Hub refused the repository or cannot be reached (no OSError)
        print(f"{prog}: error: the Hugging Face Hub: {error}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0
