"""Training and evaluation transforms of the reference pipeline, on OpenCV (``cv2``) and numpy.

Reference training pipeline, in order: resize the 256x256 patch to the input size (aspect ratio
not kept: ``cv2.resize`` with ``INTER_LINEAR`` for the image and ``INTER_NEAREST`` for the label,
as the reference's ``mmcv.imresize``), random horizontal flip (p=0.5), photometric distortion,
normalisation. The photometric distortion follows the reference library's semantics and draws:

1. brightness: with p=0.5 add ``delta ~ U(-32, 32)``;
2. draw ``mode`` in {0, 1}; if ``mode == 1`` apply contrast here;
3. saturation: with p=0.5 convert to 8-bit HSV (``cv2.cvtColor``), scale S by
   ``alpha ~ U(0.5, 1.5)``, convert back;
4. hue: with p=0.5 convert to 8-bit HSV, ``H = (H + delta) % 180`` with an integer
   ``delta`` drawn from [-18, 18) (OpenCV's 8-bit hue units of 2 degrees), convert back;
5. if ``mode == 0`` apply contrast here: with p=0.5 multiply by ``alpha ~ U(0.5, 1.5)``.

Every scaling is computed in float32 as ``x * alpha + beta``, clipped to [0, 255] and truncated to
uint8 (not rounded), as the reference. Colour conversions are OpenCV's 8-bit ``RGB <-> HSV``
(H in [0, 180), S and V in [0, 255], rounded by OpenCV): the reference converts its BGR images
with ``BGR <-> HSV``, which gives the same HSV triple for the same pixel. So for the same random
draws the transform gives the reference's uint8 image. The label map (and, with
``keep_instances``, the instance map) is only touched by the resize and the flip.
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
from ..models.unet_fcn.image_processing_unet_fcn import resize_image as shared_resize_image
from ..models.unet_fcn.image_processing_unet_fcn import resize_labels as shared_resize_labels

#: Defaults of the reference distortion.
BRIGHTNESS_DELTA: float = 32.0
CONTRAST_RANGE: tuple[float, float] = (0.5, 1.5)
SATURATION_RANGE: tuple[float, float] = (0.5, 1.5)
HUE_DELTA: int = 18


# ---------------------------------------------------------------------------------------------
# Geometric ops (image and label)
# ---------------------------------------------------------------------------------------------


def _as_array(image: Image.Image | np.ndarray, rgb: bool = False) -> np.ndarray:
    if isinstance(image, Image.Image):
        if rgb and image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    return np.asarray(image)


def resize_image(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB image to ``size x size`` with ``cv2.INTER_LINEAR`` (the reference's bilinear).

    The package's one resize rule (``image_processing_unet_fcn.resize_image``), which the image
    processor, ``pannuke_hf.inference`` and the pipeline use too.

    Args:
        image: PIL image or (H, W, 3) uint8 array.
        size: output side in pixels.

    Returns:
        (size, size, 3) uint8, a copy (the input array itself when it already has that size).
    """
    return shared_resize_image(_as_array(image, rgb=True), size, size)


def resize_label(label: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Resize a label or instance map to ``size x size`` with ``cv2.INTER_NEAREST``.

    ``INTER_NEAREST`` takes source pixel ``floor(x * W_in / W_out)`` (as the reference's
    ``mmcv.imresize(..., interpolation="nearest")``; not PIL's centre-aligned nearest). The
    package's one rule for labels (``image_processing_unet_fcn.resize_labels``).

    Args:
        label: PIL image or (H, W) integer array (uint8, uint16 or int32).
        size: output side in pixels.

    Returns:
        (size, size) array of the input's dtype.
    """
    return shared_resize_labels(_as_array(label), size, size)


def resize_pair(
    image: Image.Image | np.ndarray, label: Image.Image | np.ndarray | None, size: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize an image (bilinear) and its label map (nearest) to ``size x size`` with OpenCV.

    Args:
        image: PIL RGB image or (H, W, 3) uint8 array.
        label: PIL "L" label map, (H, W) uint8 array, or None.
        size: output side in pixels.

    Returns:
        ``(image (size, size, 3) uint8, label (size, size) uint8 or None)``.
    """
    out_label = None if label is None else resize_label(label, size).astype(np.uint8, copy=False)
    return resize_image(image, size), out_label


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


def rgb_to_hsv_u8(image: np.ndarray) -> np.ndarray:
    """8-bit RGB -> 8-bit HSV with OpenCV (``cv2.COLOR_RGB2HSV``).

    OpenCV's definition: ``V = max(R, G, B)``, ``S = 255 * (V - min) / V`` (0 when V = 0),
    ``H = 60 * (G - B) / (V - min)`` (V = R), ``120 + 60 * (B - R) / (V - min)`` (V = G),
    ``240 + 60 * (R - G) / (V - min)`` (V = B), plus 360 when negative, stored as ``H / 2``
    in [0, 180); S and H are rounded to the nearest integer (OpenCV's fixed-point tables).

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (H, W, 3) uint8 HSV.
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV)


def hsv_u8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV (H in [0, 180) half degrees) -> 8-bit RGB with OpenCV (``cv2.COLOR_HSV2RGB``).

    Args:
        hsv: (H, W, 3) uint8.

    Returns:
        (H, W, 3) uint8 RGB (the standard HSV sector formulas, rounded to the nearest integer).
    """
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2RGB)


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


#: What :meth:`SegmentationTransform.transform_example` returns for one example.
Example = dict[str, torch.Tensor]


class SegmentationTransform:
    """Image + label (+ instance map) -> model inputs; a batch transform for ``Dataset.set_transform``.

    Args:
        size: side of the square model input (the reference: 512).
        train: apply the random flip and photometric distortion (training); otherwise resize only.
        mean, std: normalisation on the 0-255 scale (defaults: the reference's).
        seed: base seed of the augmentation draws.
        resize_label: resize the label (and instance map) to ``size`` (training). For evaluation
            the reference scores at the label's own resolution, so by default the label is left
            as stored.
        image_column, label_column: dataset columns.
        photometric: apply the photometric distortion (training only).
        flip_prob: probability of the horizontal flip (training only).
        keep_instances: also carry the example's instance map (``instance_column``, (H, W)
            uint16/int32 nucleus ids, 0 = none) through the same geometric ops as the label (the
            same nearest resize, the same flip; never the photometric ops) and return it as
            ``"instance_mask"``, an int64 (h, w) tensor. Off by default: the instance maps are
            then never decoded.
        instance_column: dataset column of the instance map.

    Random draws. Given a ``key`` (:meth:`transform_example`; :class:`AugmentedDataset` passes
    ``(epoch, index)``), the flip and distortion of an example are drawn from a generator seeded
    with ``(seed, epoch, index)``: the same example in the same epoch is augmented identically in
    any process, worker or resumed run, and differently in every other epoch. Without a key (the
    ``set_transform`` path) draws come from one stream per process, seeded with ``seed``, the
    DataLoader worker's seed and the process rank, so workers and ranks never repeat each other.

    Returns (when called on a batch dict): ``{"pixel_values": [(3, size, size) float32],
    "labels": [(h, w) int64]}`` (+ ``"instance_mask": [(h, w) int64]`` with ``keep_instances``).
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
        keep_instances: bool = False,
        instance_column: str = "instance_mask",
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
        self.keep_instances = bool(keep_instances)
        self.instance_column = instance_column
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    @property
    def columns(self) -> list[str]:
        """The dataset columns this transform reads."""
        return [self.image_column, self.label_column] + (
            [self.instance_column] if self.keep_instances else []
        )

    def _generator(self, key: tuple[int, int] | None = None) -> np.random.Generator:
        if key is not None:
            epoch, index = key
            return np.random.default_rng([self.seed, int(epoch), int(index)])
        info = torch.utils.data.get_worker_info()
        worker_seed = info.seed if info is not None else 0
        process_key = (os.getpid(), worker_seed)
        if self._rng is None or self._rng_key != process_key:
            self._rng = np.random.default_rng([self.seed, worker_seed, _process_rank()])
            self._rng_key = process_key
        return self._rng

    def _geometry(self, array: Any) -> np.ndarray | None:
        if array is None:
            return None
        return resize_label(array, self.size) if self.resize_label else np.asarray(array)

    def transform_example(
        self,
        image: Image.Image | np.ndarray,
        label: Image.Image | np.ndarray | None = None,
        instance_mask: Image.Image | np.ndarray | None = None,
        key: tuple[int, int] | None = None,
    ) -> Example:
        """Transform one example.

        Args:
            image: PIL RGB image or (H, W, 3) uint8 array.
            label: label map (H, W), or None.
            instance_mask: instance map (H, W), or None; returned only with ``keep_instances``.
            key: ``(epoch, index)`` seeding this example's draws (training), or None for the
                per-process stream.

        Returns:
            ``{"pixel_values": (3, size, size) float32}`` plus ``"labels"`` (h, w) int64 when a
            label is given and ``"instance_mask"`` (h, w) int64 when ``keep_instances`` and an
            instance map is given.
        """
        img = resize_image(image, self.size)
        lab = self._geometry(label)
        inst = self._geometry(instance_mask) if self.keep_instances else None
        if self.train:
            rng = self._generator(key)
            if rng.random() < self.flip_prob:
                img = hflip(img)
                lab = None if lab is None else hflip(lab)
                inst = None if inst is None else hflip(inst)
            if self.photometric:
                img = apply_photometric(img, sample_photometric_params(rng))
        out: Example = {"pixel_values": normalize_to_tensor(img, self.mean, self.std)}
        if lab is not None:
            out["labels"] = torch.from_numpy(lab.astype(np.int64))
        if inst is not None:
            out["instance_mask"] = torch.from_numpy(inst.astype(np.int64))
        return out

    def transform_one(
        self, image: Image.Image, label: Image.Image | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform one image and label (per-process stream of draws).

        Args:
            image: PIL RGB image (H, W).
            label: PIL "L" label map (H, W), or None.

        Returns:
            ``(pixel_values (3, size, size) float32, labels (h, w) int64 or None)``.
        """
        out = self.transform_example(image, label)
        return out["pixel_values"], out.get("labels")

    def transform_batch(
        self, batch: dict[str, list[Any]], keys: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, list[torch.Tensor]]:
        """Transform a batch dict (lists per column), optionally with one draw key per example."""
        images = batch[self.image_column]
        labels = batch.get(self.label_column, [None] * len(images))
        instances = batch.get(self.instance_column) if self.keep_instances else None
        instances = instances if instances is not None else [None] * len(images)
        keys = [None] * len(images) if keys is None else list(keys)
        out: dict[str, list[torch.Tensor]] = {"pixel_values": [], "labels": [], "instance_mask": []}
        for image, label, instance, key in zip(images, labels, instances, keys):
            example = self.transform_example(image, label, instance, key)
            for name, value in example.items():
                out[name].append(value)
        return {name: values for name, values in out.items() if values}

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        """Transform a batch dict (lists of PIL images) as ``set_transform`` passes it."""
        return self.transform_batch(batch)
