"""Tissue detection: which parts of the slide hold tissue, from a low-resolution level.

:func:`detect_tissue` reads the slide at about ``mask_mpp`` µm per pixel (the coarsest pyramid
level fine enough, area-averaged down to that scale), takes the HSV saturation (H&E stains are
saturated, glass and background are not), thresholds it with Otsu's method (OpenCV) with a floor
so that a blank slide stays blank, closes and opens the mask (removing dust and joining
fragments), fills holes and drops components smaller than ``min_area_mm2`` (scikit-image).
:func:`load_tissue_mask` reads a user's PNG instead (non-zero = tissue, any size, stretched over
the whole slide). Only regions whose core touches the mask are predicted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .reading import SlideError, SlideReader

__all__ = ["TissueMask", "detect_tissue", "load_tissue_mask"]

#: Default scale of the mask (µm per mask pixel).
MASK_MPP = 8.0
#: Saturation (0-255) below which a pixel never counts as tissue, whatever Otsu says.
MIN_SATURATION = 20
#: Colour given to parts of the low-resolution image that cannot be read (a saturated pink: tissue).
UNREADABLE_RGB = (200, 80, 160)
#: Default smallest tissue piece kept (mm²).
MIN_AREA_MM2 = 0.01


@dataclass
class TissueMask:
    """A boolean mask over the whole slide.

    Attributes:
        mask: (h, w) bool, True = tissue.
        level0_per_pixel: ``(sx, sy)`` level-0 pixels per mask pixel.
        slide_mpp: µm per level-0 pixel (for areas).
        source: ``"otsu"`` or the PNG's path.
        threshold: the saturation threshold used (None for a PNG).
    """

    mask: np.ndarray
    level0_per_pixel: tuple[float, float]
    slide_mpp: float
    source: str
    threshold: float | None = None

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        sx, sy = self.level0_per_pixel
        return float(self.mask.sum()) * sx * sy * self.slide_mpp**2 / 1e6

    def touches(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether the level-0 box [x0, x1) x [y0, y1) overlaps tissue."""
        sx, sy = self.level0_per_pixel
        h, w = self.mask.shape
        c0, r0 = max(int(math.floor(x0 / sx)), 0), max(int(math.floor(y0 / sy)), 0)
        c1, r1 = min(int(math.ceil(x1 / sx)), w), min(int(math.ceil(y1 / sy)), h)
        return c1 > c0 and r1 > r0 and bool(self.mask[r0:r1, c0:c1].any())


def _read_downsampled(reader: SlideReader, target: float) -> tuple[np.ndarray, float, float]:
    """The slide area-averaged to about ``target`` level-0 pixels per pixel, read in bands."""
    import cv2

    level = 0
    for index, factor in enumerate(reader.level_downsamples):
        if factor <= target and factor >= reader.level_downsamples[level]:
            level = index
    d = reader.level_downsamples[level]
    lw, lh = reader.level_dimensions[level]
    factor = max(1, int(round(target / d)))
    out_w, out_h = max(1, lw // factor), max(1, lh // factor)
    bands = []
    step = factor * max(1, 1024 // factor)
    for y in range(0, out_h * factor, step):
        rows = min(step, out_h * factor - y)
        try:
            block = reader.read_region(0, int(round(y * d)), level, out_w * factor, rows)
        except SlideError:
            # an unreadable band (corrupt tiles) counts as tissue: its regions are then tried,
            # and the ones that fail are reported in the summary as skipped area
            reader.reopen()
            block = np.empty((rows, out_w * factor, 3), np.uint8)
            block[:] = UNREADABLE_RGB
        bands.append(
            cv2.resize(block, (out_w, rows // factor), interpolation=cv2.INTER_AREA) if factor > 1 else block
        )
    image = np.concatenate(bands, axis=0)
    W0, H0 = reader.dimensions
    return image, W0 / out_w, H0 / out_h


def detect_tissue(
    reader: SlideReader, slide_mpp: float, mask_mpp: float = MASK_MPP, min_area_mm2: float = MIN_AREA_MM2
) -> TissueMask:
    """Otsu tissue mask of the slide (see the module docstring)."""
    import cv2
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    image, sx, sy = _read_downsampled(reader, mask_mpp / slide_mpp)
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1]
    saturation = cv2.GaussianBlur(saturation, (3, 3), 0)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(float(otsu), float(MIN_SATURATION))
    mask = saturation > threshold
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel).astype(bool)
    mask = ndimage.binary_fill_holes(mask)
    pixel_mm2 = sx * sy * slide_mpp**2 / 1e6
    min_pixels = max(1, int(round(min_area_mm2 / pixel_mm2)))
    mask = remove_small_objects(mask, max_size=min_pixels - 1) if min_pixels > 1 else mask
    return TissueMask(mask, (sx, sy), slide_mpp, "otsu", threshold)


def load_tissue_mask(path: str, reader: SlideReader, slide_mpp: float) -> TissueMask:
    """A tissue mask from an image file (non-zero = tissue) stretched over the whole slide.

    Raises:
        SlideError: the file cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 0
    except (OSError, UnidentifiedImageError) as err:
        raise SlideError(f"--tissue-mask {path}: cannot be read as an image ({err})") from err
    W0, H0 = reader.dimensions
    return TissueMask(mask, (W0 / mask.shape[1], H0 / mask.shape[0]), slide_mpp, str(path))
