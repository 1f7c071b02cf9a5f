"""Training and evaluation transforms equivalent to the reference pipeline (numpy + PIL only).

Reference training pipeline, in order: resize the 256x256 patch to the input size (bilinear image,
nearest label, aspect ratio not kept), random horizontal flip (p=0.5), photometric distortion,
normalisation. The photometric distortion follows the reference library's semantics:

1. brightness: with p=0.5 add ``delta ~ U(-32, 32)``;
2. draw ``mode`` in {0, 1}; if ``mode == 1`` apply contrast here;
3. saturation: with p=0.5 convert to 8-bit HSV, scale S by ``alpha ~ U(0.5, 1.5)``, convert back;
4. hue: with p=0.5 convert to 8-bit HSV, ``H = (H + delta) % 180`` with an integer
   ``delta`` drawn from [-18, 18) (8-bit hue units of 2 degrees, as the reference), convert back;
5. if ``mode == 0`` apply contrast here: with p=0.5 multiply by ``alpha ~ U(0.5, 1.5)``.

Every step works on uint8 images: the result of each scaling is clipped to [0, 255] and truncated
to uint8 (not rounded), and 8-bit HSV stores H in [0, 180) and S, V in [0, 255], as the reference.
The label map is only touched by the resize and the flip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..constants import IMAGE_MEAN, IMAGE_STD

#: Defaults of the reference distortion.
BRIGHTNESS_DELTA: float = 32.0
CONTRAST_RANGE: tuple[float, float] = (0.5, 1.5)
SATURATION_RANGE: tuple[float, float] = (0.5, 1.5)
HUE_DELTA: int = 18


# ---------------------------------------------------------------------------------------------
# Geometric ops (image and label)
# ---------------------------------------------------------------------------------------------


def resize_pair(
    image: Image.Image, label: Image.Image | None, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (bilinear) and its label map (nearest) to ``size x size``.

    Args:
        image: PIL RGB image (H, W).
        label: PIL "L" label map (H, W) or None.
        size: output side in pixels.

    Returns:
        ``(image (size, size, 3) uint8, label (size, size) uint8 or None)``.
    """
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    out_label = None
    if label is not None:
        if label.size != (size, size):
            label = label.resize((size, size), Image.NEAREST)
        out_label = np.asarray(label, dtype=np.uint8)
    return np.asarray(image, dtype=np.uint8), out_label


def hflip(array: np.ndarray) -> np.ndarray:
    """Mirror an (H, W) or (H, W, C) array left-right (a contiguous copy)."""
    return np.ascontiguousarray(array[:, ::-1])


# ---------------------------------------------------------------------------------------------
# Photometric ops (image only, uint8 in, uint8 out)
# ---------------------------------------------------------------------------------------------


def scale_shift_u8(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``uint8(clip(values * alpha + beta, 0, 255))`` computed in float32, truncating like the reference."""
    out = values.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Add ``delta`` to every channel of a uint8 (H, W, 3) image; clip and truncate."""
    return scale_shift_u8(image, beta=delta)


def adjust_contrast(image: np.ndarray, alpha: float) -> np.ndarray:
    """Multiply every channel of a uint8 (H, W, 3) image by ``alpha``; clip and truncate."""
    return scale_shift_u8(image, alpha=alpha)


def _planes(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 contiguous planes (fast per-channel arithmetic)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def rgb_to_hsv_u8(image: np.ndarray) -> np.ndarray:
    """8-bit RGB -> 8-bit HSV with H in [0, 180) (half degrees), S and V in [0, 255].

    ``V = max(R, G, B)``, ``S = round(255 * (V - min) / V)``, ``H = round(hue_degrees / 2) % 180``
    with the hue of the maximal channel (R, then G, then B on ties); grey pixels get H = 0.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 HSV.
    """
    r, g, b = _planes(image)
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = np.rint(diff * np.float32(255.0) / np.maximum(v, np.float32(1.0)))
    # One-hot masks of the maximal channel (R, then G, then B on ties); arithmetic blends are
    # several times faster than nested np.where on these planes.
    is_r = (v == r).astype(np.float32)
    is_g = (v == g).astype(np.float32) * (1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    numerator = is_r * (g - b) + is_g * (b - r) + is_b * (r - g)
    base = np.float32(120.0) * is_g + np.float32(240.0) * is_b
    # Half degrees in [-30, 180]; grey pixels (diff 0) have numerator 0 and base 0 (R is the max).
    h = np.rint((base + np.float32(60.0) * numerator / np.maximum(diff, np.float32(1.0))) * np.float32(0.5))
    h += np.float32(180.0) * (h < 0)
    h -= np.float32(180.0) * (h >= 180)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def _hsv_to_rgb_factors() -> np.ndarray:
    """(180 * 256, 3) float32: RGB / V for every 8-bit (H, S) pair, the standard HSV formulas."""
    hue, sat = np.meshgrid(np.arange(180, dtype=np.float32), np.arange(256, dtype=np.float32), indexing="ij")
    h = hue.ravel() * np.float32(2.0 / 60.0)  # sector units in [0, 6)
    s = sat.ravel() / np.float32(255.0)
    sector = np.floor(h)
    f = h - sector
    sector = sector.astype(np.int64) % 6
    one = np.ones_like(s)
    p = one - s
    q = one - s * f
    t = one - s * (one - f)
    # For each sector, which of (1, t, p, q) scales R, G, B.
    r = np.choose(sector, [one, q, p, p, t, one])
    g = np.choose(sector, [t, one, one, q, p, p])
    b = np.choose(sector, [p, p, t, one, one, q])
    return np.stack([r, g, b], axis=0).astype(np.float32)


_HSV_FACTORS: np.ndarray = _hsv_to_rgb_factors()


def hsv_u8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV (H in [0, 180) half degrees) -> 8-bit RGB, rounded to the nearest integer.

    Args:
        hsv: (H, W, 3) uint8.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    h, s, v = _planes(hsv)
    index = (h.astype(np.int32) % 180) * 256 + s.astype(np.int32)
    out = np.empty(hsv.shape, dtype=np.uint8)
    for channel in range(3):
        values = np.take(_HSV_FACTORS[channel], index) * v
        out[..., channel] = np.clip(np.rint(values), 0, 255)
    return out


def adjust_saturation(image: np.ndarray, alpha: float) -> np.ndarray:
    """Scale the 8-bit HSV saturation of a uint8 RGB image by ``alpha`` (clip + truncate)."""
    hsv = rgb_to_hsv_u8(image)
    hsv[..., 1] = scale_shift_u8(hsv[..., 1], alpha=alpha)
    return hsv_u8_to_rgb(hsv)


def adjust_hue(image: np.ndarray, delta: int) -> np.ndarray:
    """Rotate the 8-bit hue of a uint8 RGB image by ``delta`` units of 2 degrees (mod 180)."""
    hsv = rgb_to_hsv_u8(image)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int64) + int(delta)) % 180).astype(np.uint8)
    return hsv_u8_to_rgb(hsv)


@dataclass(frozen=True)
class PhotometricParams:
    """The random draws of one photometric distortion; ``None`` means "op skipped".

    Attributes:
        brightness: additive delta, or None.
        contrast_first: the reference's ``mode == 1`` (contrast before the HSV ops).
        contrast: multiplicative alpha, or None.
        saturation: saturation alpha, or None.
        hue: integer hue shift in 8-bit hue units (2 degrees), or None.
    """

    brightness: float | None
    contrast_first: bool
    contrast: float | None
    saturation: float | None
    hue: int | None


def sample_photometric_params(
    rng: np.random.Generator,
    brightness_delta: float = BRIGHTNESS_DELTA,
    contrast_range: tuple[float, float] = CONTRAST_RANGE,
    saturation_range: tuple[float, float] = SATURATION_RANGE,
    hue_delta: int = HUE_DELTA,
) -> PhotometricParams:
    """Draw the random decisions of one distortion, in the reference's order of draws.

    Args:
        rng: numpy generator.
        brightness_delta, contrast_range, saturation_range, hue_delta: the reference defaults.

    Returns:
        A :class:`PhotometricParams`; each op is applied with probability 0.5.
    """
    brightness = float(rng.uniform(-brightness_delta, brightness_delta)) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2))  # reference mode == 1

    def draw_contrast() -> float | None:
        return float(rng.uniform(*contrast_range)) if rng.integers(2) else None

    contrast = draw_contrast() if contrast_first else None
    saturation = float(rng.uniform(*saturation_range)) if rng.integers(2) else None
    hue = int(rng.integers(-hue_delta, hue_delta)) if rng.integers(2) else None
    if not contrast_first:
        contrast = draw_contrast()
    return PhotometricParams(brightness, contrast_first, contrast, saturation, hue)


def apply_photometric(image: np.ndarray, params: PhotometricParams) -> np.ndarray:
    """Apply a drawn distortion to a uint8 (H, W, 3) RGB image in the reference's order."""
    if params.brightness is not None:
        image = adjust_brightness(image, params.brightness)
    if params.contrast_first and params.contrast is not None:
        image = adjust_contrast(image, params.contrast)
    if params.saturation is not None:
        image = adjust_saturation(image, params.saturation)
    if params.hue is not None:
        image = adjust_hue(image, params.hue)
    if not params.contrast_first and params.contrast is not None:
        image = adjust_contrast(image, params.contrast)
    return image


def normalize_to_tensor(
    image: np.ndarray, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 tensor ``(image - mean) / std`` (0-255 scale mean/std)."""
    # A 256-entry table per channel: one gather instead of a subtract and a multiply per pixel.
    table = (
        np.arange(256, dtype=np.float32)[None, :] - np.asarray(mean, dtype=np.float32)[:, None]
    ) / np.asarray(std, dtype=np.float32)[:, None]
    planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    out = np.empty(planes.shape, dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], planes[channel], out=out[channel])
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Dataset transforms (for ``Dataset.set_transform``)
# ---------------------------------------------------------------------------------------------


def _process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


class SegmentationTransform:
    """Batch transform for ``Dataset.set_transform``: PIL image + label -> model inputs.

    Args:
        size: side of the square model input (the reference: 512).
        train: apply the random flip and photometric distortion (training); otherwise resize only.
        mean, std: normalisation on the 0-255 scale (defaults: the reference's).
        seed: base seed of the augmentation stream. The stream also depends on the DataLoader
            worker (``torch.initial_seed()`` there, which changes per worker and per epoch) and
            on the process rank, so workers and ranks never repeat each other's draws while a
            run stays reproducible for a given seed.
        resize_label: resize the label to ``size`` (training). For evaluation the reference
            scores at the label's own resolution, so by default the label is left as stored.
        image_column, label_column: dataset columns.
        photometric: apply the photometric distortion (training only).
        flip_prob: probability of the horizontal flip (training only).

    Returns (when called on a batch dict): ``{"pixel_values": [(3, size, size) float32],
    "labels": [(h, w) int64]}``.
    """

    def __init__(
        self,
        size: int,
        train: bool,
        mean: Sequence[float] = IMAGE_MEAN,
        std: Sequence[float] = IMAGE_STD,
        seed: int = 0,
        resize_label: bool | None = None,
        image_column: str = "image",
        label_column: str = "semantic_mask",
        photometric: bool = True,
        flip_prob: float = 0.5,
    ) -> None:
        self.size = int(size)
        self.train = bool(train)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.resize_label = self.train if resize_label is None else bool(resize_label)
        self.image_column = image_column
        self.label_column = label_column
        self.photometric = photometric
        self.flip_prob = float(flip_prob)
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        worker_seed = info.seed if info is not None else 0
        key = (os.getpid(), worker_seed)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, worker_seed, _process_rank()])
            self._rng_key = key
        return self._rng

    def transform_one(
        self, image: Image.Image, label: Image.Image | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one example.

        Args:
            image: PIL RGB image (H, W).
            label: PIL "L" label map (H, W), or None.

        Returns:
            ``(pixel_values (3, size, size) float32, labels (h, w) int64 or None)``.
        """
        if self.resize_label:
            img, lab = resize_pair(image, label, self.size)
        else:
            img, _ = resize_pair(image, None, self.size)
            lab = None if label is None else np.asarray(label, dtype=np.uint8)
        if self.train:
            rng = self._generator()
            if rng.random() < self.flip_prob:
                img = hflip(img)
                lab = None if lab is None else hflip(lab)
            if self.photometric:
                img = apply_photometric(img, sample_photometric_params(rng))
        labels = None if lab is None else torch.from_numpy(lab.astype(np.int64))
        return normalize_to_tensor(img, self.mean, self.std), labels

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        """Transform a batch dict (lists of PIL images) as ``set_transform`` passes it."""
        images = batch[self.image_column]
        labels = batch.get(self.label_column, [None] * len(images))
        out: dict[str, list[torch.Tensor]] = {"pixel_values": [], "labels": []}
        for image, label in zip(images, labels):
            pixel_values, target = self.transform_one(image, label)
            out["pixel_values"].append(pixel_values)
            if target is not None:
                out["labels"].append(target)
        if not out["labels"]:
            del out["labels"]
        return out
