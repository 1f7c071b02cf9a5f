"""Arguments of ``train.py``: three dataclasses parsed by ``HfArgumentParser``.

A run is configured by an optional YAML or JSON file (first positional argument) and command-line
flags; flags override the file. Every key of the file must be a field of one of the dataclasses:
an unknown key is an error that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, TrainingArguments

from ..constants import REFERENCE_INPUT_SIZE, VOID_LABELS
from .schedule import REFERENCE_MIN_LR, REFERENCE_MOMENTUM, REFERENCE_POLY_POWER

#: Split schemes understood by ``pannuke_hf.data.splits.make_splits``.
SPLIT_SCHEMES: tuple[str, ...] = ("reference", "fold1", "fold2", "fold3")
CONFIG_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")


@dataclass
class DataArguments:
    """Where the data comes from, how it is split, and how it is transformed."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding the raw PanNuke folds (`Fold k/` folders or `fold_k.zip` files)."},
    )
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder of the Arrow dataset (default: the datasets cache)."}
    )
    split_scheme: str = field(
        default="reference",
        metadata={
            "help": "How to split the folds: `reference` (80/20 split of all patches, as the reference "
            "project) or `fold1`/`fold2`/`fold3` (official protocol rows: train, validation, test folds).",
            "choices": list(SPLIT_SCHEMES),
        },
    )
    void_label: int = field(
        default=0,
        metadata={
            "help": "Label of void pixels (no class, no background): 0 (background, as the reference) or 255 "
            "(the loss and the metrics ignore them).",
            "choices": list(VOID_LABELS),
        },
    )
    eval_split: str = field(
        default="validation",
        metadata={"help": "Split scored during and after training (`validation` or `test`)."},
    )
    image_size: int = field(
        default=REFERENCE_INPUT_SIZE,
        metadata={"help": "Side of the square model input (patches are resized)."},
    )
    augment: bool = field(
        default=True, metadata={"help": "Random flip + photometric distortion on the training split."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training examples (debugging, demos)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N evaluation examples (debugging, demos)."}
    )
    build_num_proc: int | None = field(
        default=None, metadata={"help": "Processes used to build the Arrow dataset from the raw folds."}
    )
    synthetic_data: bool = field(
        default=False,
        metadata={
            "help": "Generate PanNuke-format data (the demo) into `data_dir` (without --data_dir: a folder keyed on "
            "the generator's code, patch count and seed under $PANNUKE_HF_DEMO_CACHE or "
            "~/.cache/pannuke_hf/demo) unless it is already there."
        },
    )
    synthetic_patches_per_fold: int = field(
        default=48, metadata={"help": "Patches per generated fold (with --synthetic_data)."}
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the generated data."})
    synthetic_touching: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the generated nuclei given a touching neighbour of the same class "
            "(with --synthetic_data; 0 = nuclei never touch)."
        },
    )

    def __post_init__(self) -> None:
        if self.split_scheme not in SPLIT_SCHEMES:
            raise ValueError(f"split_scheme must be one of {SPLIT_SCHEMES}, got {self.split_scheme!r}")
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.void_label not in VOID_LABELS:  # a configuration file's value skips argparse's choices
            raise ValueError(f"void_label must be one of {list(VOID_LABELS)}, got {self.void_label!r}")


@dataclass
class ModelArguments:
    """Which model to train: a checkpoint to start from, or a fresh UNet-FCN of a given size."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint (folder or Hub id) to start from; default: a freshly initialised UNet-FCN."
        },
    )
    base_channels: int = field(
        default=64, metadata={"help": "Channels of the first UNet stage (the reference: 64)."}
    )
    num_stages: int = field(
        default=5, metadata={"help": "UNet stages (the reference: 5, overall stride 16)."}
    )
    classifier_init_std: float = field(
        default=0.01,
        metadata={
            "help": "Std of the normal init of the 1x1 classifier (the reference: 0.01). Tiny models learn "
            "the nucleus classes far faster with a larger value (the demo uses 0.2)."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint head with another number of labels."}
    )
    instance_head: str | None = field(
        default=None,
        metadata={
            "help": "`hv`: add the distance-map instance head (nucleus map + horizontal / vertical distance "
            "maps, trained from the instance maps; see docs/instance-head.md). Default: none (a fresh model) "
            "or the checkpoint's.",
            "choices": ["hv"],
        },
    )
    hv_msge_loss_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the distance maps' gradient loss (MSGE) of the hv head (default: the config's, 10)."
        },
    )


@dataclass
class PanNukeTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` plus the reference optimizer, schedule and DDP options.

    Defaults that differ from ``TrainingArguments``: ``remove_unused_columns=False`` (the lazy
    transforms need the image columns), ``batch_eval_metrics=True`` (memory-flat evaluation),
    ``lr_schedule="poly"`` (the reference schedule), SGD with momentum 0.9, and for speed on GPUs
    ``logging_nan_inf_filter=False`` (no per-step read-back), ``dataloader_persistent_workers=True``
    and non-blocking copies from pinned memory (``accelerator_config.non_blocking``).
    """

    optimizer: str = field(
        default="sgd",
        metadata={
            "help": "`sgd` (the reference: SGD with --momentum and --weight_decay on every parameter) or "
            "`hf` (the optimizer chosen by --optim).",
            "choices": ["sgd", "hf"],
        },
    )
    momentum: float = field(default=REFERENCE_MOMENTUM, metadata={"help": "SGD momentum."})
    lr_schedule: str = field(
        default="poly",
        metadata={
            "help": "`poly` (the reference: (lr0 - min_lr) * (1 - t/(T - 1))^power + min_lr for steps "
            "t = 0..T-1, T = --max_steps) or `hf` (the schedule chosen by --lr_scheduler_type).",
            "choices": ["poly", "hf"],
        },
    )
    min_lr: float = field(default=REFERENCE_MIN_LR, metadata={"help": "Floor of the poly schedule."})
    poly_power: float = field(default=REFERENCE_POLY_POWER, metadata={"help": "Power of the poly schedule."})
    sync_bn: bool = field(
        default=False,
        metadata={"help": "Convert BatchNorm to SyncBatchNorm when more than one process runs."},
    )
    torch_num_threads: int | None = field(
        default=None,
        metadata={
            "help": "Intra-op CPU threads of torch (default: torch's choice). On a small or busy CPU, 1 thread "
            "plus a DataLoader worker is often much faster than several threads competing."
        },
    )
    instance_metrics: bool | None = field(
        default=None,
        metadata={
            "help": "Also report nucleus-level scores (mPQ, bPQ, F1_d; PanNuke protocol) in evaluation. "
            "Default: true for models with an instance head."
        },
    )
    instance_postprocess: str = field(
        default="auto",
        metadata={
            "help": "Nuclei for --instance_metrics: `auto` (the hv head when present, else `watershed`), `hv`, "
            "`watershed` (per-class components split by a distance watershed) or `components`.",
            "choices": ["auto", "hv", "watershed", "components"],
        },
    )
    instance_min_size: int = field(
        default=10, metadata={"help": "Smallest nucleus kept in evaluation, in pixels of the 256x256 labels."}
    )
    prediction_figure_samples: int = field(
        default=0, metadata={"help": "After evaluation, save a PNG of N predictions beside ground truth."}
    )
    do_train: bool = field(
        default=True, metadata={"help": "Train (set false to only evaluate a checkpoint)."}
    )
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on --eval_split after training."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the lazy transforms read the image columns."}
    )
    batch_eval_metrics: bool = field(
        default=True, metadata={"help": "Accumulate metrics batch by batch (memory-flat evaluation)."}
    )
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "Keep the model's weights and the image batches channels-last (NHWC). Default: on for CUDA "
            "devices (cuDNN's bf16 convolutions are about twice as fast in that layout), off on the CPU. "
            "Values are the same in either layout, to float rounding."
        },
    )
    cudnn_benchmark: bool | None = field(
        default=None,
        metadata={
            "help": "Let cuDNN time its convolution algorithms on the first steps and keep the fastest "
            "(torch.backends.cudnn.benchmark). Default: on for CUDA devices (the reference library's default)."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Leave NaN / inf losses out of the logged mean. Default off: the check reads the loss back "
            "from the GPU after every step, which stalls the pipeline; a NaN is then logged as NaN."
        },
    )
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={
            "help": "Keep the DataLoader workers alive between epochs and evaluations (no restart stall). "
            "Ignored with --dataloader_num_workers 0."
        },
    )

    def __post_init__(self) -> None:
        # torch's DataLoader refuses persistent workers when there are none.
        if self.dataloader_num_workers == 0:
            self.dataloader_persistent_workers = False
        super().__post_init__()
        config = self.accelerator_config
        if self.dataloader_pin_memory and hasattr(config, "non_blocking"):
            # Batches come from pinned memory: copy them to the GPU without blocking the host, so
            # the next batch's copy overlaps the current step (a no-op on the CPU).
            config.non_blocking = True


ALL_ARGUMENT_CLASSES = (DataArguments, ModelArguments, PanNukeTrainingArguments)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON configuration file into a flat dict of argument values.

    Args:
        path: a ``.yaml``/``.yml``/``.json`` file.

    Returns:
        The mapping of argument name -> value.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a mapping, or holds keys that are no argument.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    text = path.read_text()
    if path.suffix == ".json":
        values = json.loads(text)
    else:
        import yaml

        values = yaml.safe_load(text)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a configuration file must hold a mapping of argument names to values")
    valid = {f.name for cls in ALL_ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(
            f"{path}: unknown configuration key(s) {unknown}; every key must be an argument of train.py "
            "(see `python train.py --help`)"
        )
    return values


#: What ``--help`` says before the list of arguments (whose defaults are the arguments' own).
HELP_DESCRIPTION: str = (
    "Train and/or evaluate a UNet-FCN on PanNuke: [CONFIG.yaml|json] [--flags]. The defaults listed below "
    "are the arguments' own: the reference setting (512x512 inputs, base 64 channels, 5 stages, classifier "
    "init std 0.01, real data from --data_dir, SGD + poly LR) and TrainingArguments' defaults. A configuration "
    "file replaces them with its values and flags override the file. Without a configuration file the demo "
    "configuration (configs/demo.yaml: generated data, 128x128, base 8, 3 stages, 500 steps on the CPU) "
    "applies, and flags given alone override it."
)


def given_names(argv: Sequence[str], config: Mapping[str, Any] | None = None) -> set[str]:
    """Argument names set explicitly: the keys of the configuration file and the ``--flags`` of ``argv``."""
    names = set(config or {})
    for arg in argv:
        if arg.startswith("--"):
            names.add(arg[2:].split("=", 1)[0].replace("-", "_"))
    return names


def check_combinations(training_args: PanNukeTrainingArguments, given: set[str]) -> None:
    """Refuse standard ``TrainingArguments`` that the chosen optimizer / schedule would ignore.

    ``--optimizer sgd`` (the reference SGD) ignores ``--optim`` and ``--optim_args``;
    ``--lr_schedule poly`` (the reference schedule, no warm-up) ignores ``--lr_scheduler_type``,
    ``--lr_scheduler_kwargs`` and a non-zero ``--warmup_steps`` / ``--warmup_ratio``. Reentrant
    activation checkpointing would leave the backbone untrained (see the model).

    Args:
        training_args: the parsed training arguments.
        given: names set explicitly (:func:`given_names`).

    Raises:
        ValueError: one line naming the flag and what to do instead.
    """
    if training_args.optimizer == "sgd":
        for name in ("optim", "optim_args"):
            if name in given:
                raise ValueError(
                    f"--{name} is used only with --optimizer hf; --optimizer sgd (the default: the reference SGD "
                    f"with --momentum and --weight_decay) would ignore it. Add --optimizer hf, or drop --{name}"
                )
    if training_args.lr_schedule == "poly":
        for name in ("lr_scheduler_type", "lr_scheduler_kwargs"):
            if name in given:
                raise ValueError(
                    f"--{name} is used only with --lr_schedule hf; --lr_schedule poly (the default: the reference "
                    f"poly decay, --min_lr / --poly_power) would ignore it. Add --lr_schedule hf, or drop --{name}"
                )
        for name in ("warmup_steps", "warmup_ratio"):
            if name in given and getattr(training_args, name, 0):
                raise ValueError(
                    f"--{name} {getattr(training_args, name)}: the poly schedule (--lr_schedule poly, the "
                    "reference's) has no warm-up; add --lr_schedule hf (with --lr_scheduler_type) for one, or "
                    f"drop --{name}"
                )
    for name in ("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs"):
        kwargs = getattr(training_args, name, None)
        if isinstance(kwargs, Mapping) and kwargs.get("use_reentrant"):
            raise ValueError(
                f"--{name} with use_reentrant true: reentrant activation checkpointing would leave every backbone "
                "parameter of UNet-FCN untrained (its image input needs no gradient); drop use_reentrant "
                "(the default is the non-reentrant mode)"
            )


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[DataArguments, ModelArguments, PanNukeTrainingArguments]:
    """Parse ``[config.yaml|json] [--flags]`` into the three argument dataclasses.

    The file's values become the parser's defaults, so a flag given on the command line
    overrides the file. Values are type-checked by the same parser in both cases.

    Args:
        argv: the arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        ``(data_args, model_args, training_args)``.

    Raises:
        ValueError: an unknown key in the file, an unknown flag, or a combination the run would
            not honour (:func:`check_combinations`).
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ALL_ARGUMENT_CLASSES, description=HELP_DESCRIPTION)
    config: dict[str, Any] = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        config = load_config_file(argv[0])
        parser.set_defaults(**config)
        argv = argv[1:]
    elif argv and not argv[0].startswith("-"):
        raise ValueError(
            f"the first argument must be a configuration file ({'/'.join(CONFIG_SUFFIXES)}), got {argv[0]!r}"
        )
    data_args, model_args, training_args = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False
    )
    check_combinations(training_args, given_names(argv, config))
    return data_args, model_args, training_args
