"""``pannuke-hf convert-mmseg CHECKPOINT OUT_DIR``: mmsegmentation UNet-FCN checkpoint -> transformers folder."""

from __future__ import annotations

import argparse
import sys


def _num_labels(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of labels, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the command."""
    parser = argparse.ArgumentParser(
        prog="pannuke-hf convert-mmseg",
        description=(
            "Convert an mmsegmentation fcn_unet_s5-d16-style checkpoint (any number of classes, with or "
            "without auxiliary head) into a transformers checkpoint (safetensors + config + image "
            "processor + model code for trust_remote_code). Every entry is mapped and loaded strictly."
        ),
    )
    parser.add_argument("checkpoint", help="mmseg .pth file (a state dict, or a dict with 'state_dict')")
    parser.add_argument("output_dir", help="folder to write the transformers checkpoint to")
    parser.add_argument(
        "--num-labels",
        type=_num_labels,
        default=None,
        help="expected number of labels; 'auto' (default) reads it from decode_head.conv_seg",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="resize size of the saved image processor (default 512)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; prints a one-line summary, returns 0 (or 1 with a message on a bad checkpoint)."""
    args = build_parser().parse_args(argv)
    from ._common import check_input_file, fail

    check_input_file(args.checkpoint, "checkpoint", "file (an mmsegmentation .pth checkpoint)")
    from pannuke_hf.models.unet_fcn.convert_mmseg_unet_fcn_to_hf import (
        ConversionError,
        convert_mmseg_checkpoint,
    )

    try:
        model = convert_mmseg_checkpoint(
            args.checkpoint, args.output_dir, num_labels=args.num_labels, image_size=args.image_size
        )
    except ConversionError as error:
        return fail("pannuke-hf convert-mmseg", error)
    from ..constants import full_class_name

    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    names = ", ".join(full_class_name(name) for name in config.id2label.values())  # as people read them
    print(
        f"wrote {args.output_dir}: {config.num_labels} labels ({names}), "
        f"auxiliary head: {'yes' if config.use_auxiliary_head else 'no'}, {parameters:,} parameters, "
        f"{len(model.state_dict())} tensors"
    )
    return 0


if __name__ == "__main__":  # through the dispatcher: its error handling and exit codes
    from ..cli import main as cli_main

    sys.exit(cli_main(["convert-mmseg", *sys.argv[1:]]))
