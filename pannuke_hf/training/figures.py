"""A picture of predictions beside ground truth, saved after evaluation (the demo's PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..metrics import logits_to_label_maps
from ..visualization import colorize
from .augment import normalize_to_tensor, resize_pair

_HEADER = 18


@torch.no_grad()
def predict_label_maps(
    model: torch.nn.Module,
    images: list[Image.Image],
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> list[np.ndarray]:
    """Label maps of ``images`` at their own resolution (resize -> model -> bilinear back -> argmax).

    Args:
        model: a semantic-segmentation model returning ``.logits`` (B, C, size, size).
        images: PIL RGB images (H, W).
        size: model input side.
        mean, std: normalisation on the 0-255 scale.

    Returns:
        One (H, W) uint8 label map per image.
    """
    model.eval()
    device = next(model.parameters()).device
    maps = []
    for image in images:
        array, _ = resize_pair(image, None, size)
        pixel_values = normalize_to_tensor(array, mean, std)[None].to(device)
        logits = model(pixel_values=pixel_values).logits
        maps.append(logits_to_label_maps(logits, (image.height, image.width))[0].cpu().numpy())
    return maps


def save_prediction_figure(
    images: list[Image.Image],
    references: list[np.ndarray],
    predictions: list[np.ndarray],
    path: str | Path,
) -> Path:
    """Save one row per example: image | ground truth | prediction (PNG, palette colours).

    Args:
        images: PIL RGB images (H, W).
        references: (H, W) label maps.
        predictions: (H, W) label maps.
        path: output PNG.

    Returns:
        The written path.
    """
    if not (len(images) == len(references) == len(predictions)) or not images:
        raise ValueError(
            "save_prediction_figure needs the same, non-zero number of images, references, predictions"
        )
    height, width = images[0].height, images[0].width
    canvas = Image.new("RGB", (3 * width, _HEADER + len(images) * height), "white")
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((column * width + 4, 3), title, fill="black")
    for row, (image, reference, prediction) in enumerate(zip(images, references, predictions)):
        top = _HEADER + row * height
        canvas.paste(image.convert("RGB").resize((width, height)), (0, top))
        canvas.paste(
            Image.fromarray(colorize(reference)).resize((width, height), Image.NEAREST), (width, top)
        )
        canvas.paste(
            Image.fromarray(colorize(prediction)).resize((width, height), Image.NEAREST), (2 * width, top)
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
