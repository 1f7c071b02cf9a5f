"""Loading a segmentation checkpoint and its image processor: one function for the commands and the demo.

``pannuke-hf predict``, ``pannuke-hf slide`` and the Gradio demo load models through
:func:`load_model`, so a checkpoint folder or Hub id behaves the same everywhere.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["load_model", "resolve_device"]


def resolve_device(device: str | None) -> str:
    """``device`` as given, or ``"cuda"`` when CUDA is available and ``"cpu"`` otherwise."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, device: str | None = None) -> tuple[Any, Any]:
    """Load a segmentation model and its image processor with the Auto classes.

    Importing ``pannuke_hf`` registered the UNet-FCN classes, so local checkpoints load without
    ``trust_remote_code``. When the checkpoint has no processor file, the package's default
    processor is used (with a warning on stderr).

    Args:
        name: checkpoint folder (``save_pretrained``: model + processor) or Hub id. Check it first
            with ``pannuke_hf.commands._common.check_model_source`` for a one-line error.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; None: CUDA when available.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.

    Raises:
        OSError, ValueError, RuntimeError: as ``from_pretrained`` raises them.
    """
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    import pannuke_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(name)
    try:
        processor = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        from .unet_fcn import UNetFCNImageProcessor

        print(
            f"warning: no image processor in {name} ({err}); using UNetFCNImageProcessor()", file=sys.stderr
        )
        processor = UNetFCNImageProcessor()
    model.to(resolve_device(device)).eval()
    return model, processor
