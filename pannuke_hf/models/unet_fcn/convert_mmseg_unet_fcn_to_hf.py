"""Convert an mmsegmentation UNet-FCN checkpoint (fcn_unet_s5-d16 and variants) to transformers.

Every entry of the source state dict is renamed by one of the explicit rules in ``KEY_RULES``,
the architecture (stages, channels, convs per stage, labels, auxiliary head) is read from the key
names and shapes, and the weights are loaded strictly: a missing, unexpected or wrongly shaped
entry is an error that lists the keys. The file is read with ``torch.load(weights_only=True)``;
Python objects in its ``meta`` (e.g. mmengine's message hub) are replaced by inert placeholders,
never executed.

Assumed (not visible in the weights): dilations 1, bilinear upsampling, head kernel from the
weights, dropout 0.1, auxiliary loss weight 0.4 (the reference values).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .configuration_unet_fcn import UNetFCNConfig
from .image_processing_unet_fcn import UNetFCNImageProcessor
from .modeling_unet_fcn import UNetFCNForSemanticSegmentation

#: (mmseg key pattern, transformers key template): the complete renaming, applied in order.
#: Encoder stage i is an ``nn.Sequential``: ``[MaxPool2d, block]`` (block at index 1) when the
#: stage max-pools, else ``[block]`` (index 0).
KEY_RULES: tuple[tuple[str, str], ...] = (
    (
        r"backbone\.encoder\.(\d+)\.[01]\.convs\.(\d+)\.(conv|bn)\.(\w+)",
        r"unet.encoder.\1.block.convs.\2.\3.\4",
    ),
    (
        r"backbone\.decoder\.(\d+)\.conv_block\.convs\.(\d+)\.(conv|bn)\.(\w+)",
        r"unet.decoder.\1.block.convs.\2.\3.\4",
    ),
    (
        r"backbone\.decoder\.(\d+)\.upsample\.interp_upsample\.1\.(conv|bn)\.(\w+)",
        r"unet.decoder.\1.upsample.\2.\3",
    ),
    (r"(decode_head|auxiliary_head)\.convs\.(\d+)\.(conv|bn)\.(\w+)", r"\1.convs.\2.\3.\4"),
    (r"(decode_head|auxiliary_head)\.conv_seg\.(weight|bias)", r"\1.classifier.\2"),
)

_MAX_LISTED = 12


class ConversionError(ValueError):
    """The checkpoint is not a UNet-FCN checkpoint this converter can map exactly."""


def _listing(keys, what: str) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED]) + (
        f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    )
    return f"{len(keys)} {what}: {shown}"


def rename_key(key: str) -> str | None:
    """The transformers name of mmseg key ``key``, or ``None`` when no rule matches."""
    for pattern, template in KEY_RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    return None


class _Placeholder:
    """Stands in for any Python object of a checkpoint's metadata: accepts and discards its state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def load_mmseg_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an mmseg checkpoint file with ``weights_only=True``.

    Args:
        path: a ``.pth`` file holding either a raw state dict or a dict with ``state_dict`` (and
            optionally ``meta``; mmengine wraps models so keys may start with ``module.``).

    Returns:
        ``(state_dict, meta)``; ``meta`` is ``{}`` for a raw state dict.

    Raises:
        ConversionError: unreadable / truncated file, or no tensors inside.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first_error:
        # Metadata objects outside the weights-only allowlist: map each to an inert placeholder.
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            with torch.serialization.safe_globals([(_Placeholder, name) for name in names]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise ConversionError(
                f"{path}: cannot read the checkpoint with torch.load(weights_only=True) (truncated or not a "
                f"PyTorch file?): {type(first_error).__name__}: {str(first_error).splitlines()[0][:300]}"
            ) from first_error
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(
            f"{path}: expected a state dict or a dict with 'state_dict', got {type(checkpoint).__name__}"
        )
    meta = {}
    if "state_dict" in checkpoint:
        meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
        checkpoint = checkpoint["state_dict"]
    state_dict = {}
    for key, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{path}: state-dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        state_dict[key[len("module.") :] if key.startswith("module.") else key] = value
    if not state_dict:
        raise ConversionError(f"{path}: the state dict is empty")
    return state_dict, dict(meta)


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> dict[int, int]:
    """For keys matching ``pattern`` (two integer groups), the number of distinct second indices per first."""
    found: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.fullmatch(pattern, key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return {i: len(v) for i, v in sorted(found.items())}


def _head_fields(state_dict, prefix: str, stage_channels_deepest_first: list[int]) -> dict:
    """Channels, convs, kernel, input index and labels of an FCN head read from its weights."""
    seg = state_dict.get(f"{prefix}.conv_seg.weight")
    if seg is None:
        raise ConversionError(f"no '{prefix}.conv_seg.weight' in the checkpoint: not an FCN head")
    num_convs = len({k.split(".")[2] for k in state_dict if k.startswith(f"{prefix}.convs.")})
    first = state_dict.get(f"{prefix}.convs.0.conv.weight") if num_convs else seg
    if first is None or first.ndim != 4:
        raise ConversionError(f"'{prefix}' has convs but no 4-D '{prefix}.convs.0.conv.weight'")
    in_channels = first.shape[1]
    if in_channels not in stage_channels_deepest_first:
        raise ConversionError(
            f"'{prefix}' reads {in_channels} channels, which no backbone output has ({stage_channels_deepest_first})"
        )
    index = stage_channels_deepest_first.index(in_channels) - len(stage_channels_deepest_first)
    return {
        "channels": seg.shape[1],
        "num_convs": num_convs,
        "kernel": first.shape[-1] if num_convs else 3,
        "in_index": index,
        "num_labels": seg.shape[0],
    }


def infer_config(
    state_dict: Mapping[str, torch.Tensor], num_labels: int | None = None, meta: Mapping | None = None
) -> UNetFCNConfig:
    """Build the [`UNetFCNConfig`] that an mmseg UNet-FCN state dict describes.

    Args:
        state_dict: mmseg-named tensors (``backbone.*``, ``decode_head.*``, optional ``auxiliary_head.*``).
        num_labels: expected number of labels; ``None`` reads it from ``decode_head.conv_seg``.
        meta: the checkpoint's ``meta``; its ``dataset_meta.classes`` name the labels unless the
            checkpoint has as many labels as the default config (PanNuke: the reference project's
            names for labels 2-5 are wrong, the package's are used).

    Returns:
        The config (raises ``ConversionError`` when the keys do not describe a UNet-FCN).
    """
    encoder = _count(state_dict, r"backbone\.encoder\.(\d+)\.[01]\.convs\.(\d+)\.conv\.weight")
    decoder = _count(state_dict, r"backbone\.decoder\.(\d+)\.conv_block\.convs\.(\d+)\.conv\.weight")
    num_stages = len(encoder)
    if num_stages == 0 or list(encoder) != list(range(num_stages)):
        raise ConversionError(
            f"no consecutive 'backbone.encoder.<i>' stages found (got stages {list(encoder)})"
        )
    if list(decoder) != list(range(num_stages - 1)):
        raise ConversionError(
            f"expected decoder stages 0..{num_stages - 2} for {num_stages} encoder stages, got {list(decoder)}"
        )
    first = state_dict.get("backbone.encoder.0.0.convs.0.conv.weight")
    if first is None or first.ndim != 4:
        raise ConversionError("missing 'backbone.encoder.0.0.convs.0.conv.weight' (first conv of the UNet)")
    base_channels, num_channels = first.shape[0], first.shape[1]
    downsamples = [
        any(k.startswith(f"backbone.encoder.{i}.1.") for k in state_dict) for i in range(1, num_stages)
    ]
    strides = [1] + [1 if pooled else 2 for pooled in downsamples]
    deepest_first = [base_channels * 2**i for i in range(num_stages)][::-1]

    head = _head_fields(state_dict, "decode_head", deepest_first)
    if num_labels is not None and num_labels != head["num_labels"]:
        raise ConversionError(
            f"--num-labels {num_labels} but decode_head.conv_seg has {head['num_labels']} output labels"
        )
    fields = dict(
        num_channels=num_channels,
        base_channels=base_channels,
        num_stages=num_stages,
        encoder_num_convs=[encoder[i] for i in range(num_stages)],
        decoder_num_convs=[decoder[i] for i in range(num_stages - 1)],
        strides=strides,
        downsamples=downsamples,
        encoder_dilations=[1] * num_stages,
        decoder_dilations=[1] * (num_stages - 1),
        head_in_index=head["in_index"],
        head_channels=head["channels"],
        head_num_convs=head["num_convs"],
        head_kernel_size=head["kernel"],
    )
    if any(key.startswith("auxiliary_head.") for key in state_dict):
        aux = _head_fields(state_dict, "auxiliary_head", deepest_first)
        if aux["num_labels"] != head["num_labels"]:
            raise ConversionError(
                f"auxiliary_head has {aux['num_labels']} labels, decode_head {head['num_labels']}"
            )
        fields.update(
            use_auxiliary_head=True,
            auxiliary_in_index=aux["in_index"],
            auxiliary_channels=aux["channels"],
            auxiliary_num_convs=aux["num_convs"],
        )
    classes = ((meta or {}).get("dataset_meta") or {}).get("classes")
    labels = head["num_labels"]
    if classes is not None and len(classes) == labels and labels != UNetFCNConfig.default_num_labels:
        fields["id2label"] = {i: str(name) for i, name in enumerate(classes)}
    else:
        fields["num_labels"] = labels
    try:
        return UNetFCNConfig(**fields)
    except ValueError as error:
        raise ConversionError(f"the checkpoint describes an unsupported UNet-FCN: {error}") from error


def convert_mmseg_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: UNetFCNConfig | None = None, meta: Mapping | None = None
) -> UNetFCNForSemanticSegmentation:
    """Build a [`UNetFCNForSemanticSegmentation`] holding exactly the weights of an mmseg state dict.

    Args:
        state_dict: mmseg-named tensors.
        config: the target config; ``None`` infers it with [`infer_config`].
        meta: the checkpoint's ``meta`` (label names), used only when ``config`` is ``None``.

    Returns:
        The model in eval mode.

    Raises:
        ConversionError: listing unmapped, missing, unexpected and wrongly shaped keys.
    """
    config = infer_config(state_dict, meta=meta) if config is None else config
    model = UNetFCNForSemanticSegmentation(config)
    target = model.state_dict()

    renamed, placed, sources = {}, set(), {}
    unmapped, unexpected, mismatched, duplicated = [], [], [], []
    for key, value in state_dict.items():
        new_key = rename_key(key)
        if new_key is None:
            unmapped.append(key)
        elif new_key not in target:
            unexpected.append(f"{key} -> {new_key}")
        elif new_key in placed:
            duplicated.append(f"{sources[new_key]} and {key} -> {new_key}")
        else:
            placed.add(new_key)
            sources[new_key] = key
            if tuple(value.shape) != tuple(target[new_key].shape):
                mismatched.append(f"{key} {tuple(value.shape)} != {new_key} {tuple(target[new_key].shape)}")
            else:
                renamed[new_key] = value
    missing = [key for key in target if key not in placed]
    problems = []
    if unmapped:
        problems.append(_listing(unmapped, "keys match no conversion rule"))
    if unexpected:
        problems.append(_listing(unexpected, "keys have no place in the model"))
    if duplicated:
        problems.append(_listing(duplicated, "model weights are given twice"))
    if mismatched:
        problems.append(_listing(mismatched, "keys have the wrong shape"))
    if missing:
        problems.append(_listing(missing, "model weights are missing from the checkpoint"))
    if problems:
        raise ConversionError("cannot convert the checkpoint exactly:\n  " + "\n  ".join(problems))
    model.load_state_dict(renamed, strict=True)
    return model.eval()


def convert_mmseg_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_labels: int | None = None,
    image_size: int | None = None,
) -> UNetFCNForSemanticSegmentation:
    """Convert an mmseg checkpoint file and save model + image processor with ``save_pretrained``.

    Args:
        checkpoint_path: mmseg ``.pth`` file (raw state dict or ``{"state_dict": ..., "meta": ...}``).
        output_dir: folder to write (``config.json``, ``model.safetensors``, ``preprocessor_config.json``
            and the model code for ``trust_remote_code``).
        num_labels: expected number of labels (``None``: read from the checkpoint).
        image_size: processor resize size (``None``: the processor default, 512).

    Returns:
        The converted model.
    """
    state_dict, meta = load_mmseg_checkpoint(checkpoint_path)
    config = infer_config(state_dict, num_labels=num_labels, meta=meta)
    model = convert_mmseg_state_dict(state_dict, config)
    processor = (
        UNetFCNImageProcessor()
        if image_size is None
        else UNetFCNImageProcessor(size={"height": image_size, "width": image_size})
    )
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return model


__all__ = [
    "KEY_RULES",
    "ConversionError",
    "convert_mmseg_checkpoint",
    "convert_mmseg_state_dict",
    "infer_config",
    "load_mmseg_checkpoint",
    "rename_key",
]
