"""Plain images (PNG, JPEG, small TIFF) as one-level slides, read whole once with Pillow.

Meant for images that fit in memory; the µm/px comes from the file's DPI when it records one in
pixels per centimetre or inch (otherwise give ``--mpp``).
"""

from __future__ import annotations

import os

import numpy as np

from ..reading import SlideReader, register_reader

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReader(SlideReader):
    """A single-level image; regions beyond its edges are white."""

    format = "image"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        from PIL import Image

        from ...visualization import to_rgb_uint8

        Image.MAX_IMAGE_PIXELS = None  # a large plain image is what the user asked for
        with Image.open(path) as image:
            image.load()
            dpi = image.info.get("dpi")
            self._rgb = to_rgb_uint8(image, name=path)
        h, w = self._rgb.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        if dpi and dpi[0] and dpi[0] > 1 and dpi[0] != 72 and dpi[0] != 96:
            # dots per inch -> µm per pixel (72 / 96 are screen defaults, not scanner resolutions)
            self.mpp = (25400.0 / float(dpi[0]), 25400.0 / float(dpi[1] or dpi[0]))

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        h, w = self._rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, w), min(y + height, h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out


def _can_open(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in EXTENSIONS


register_reader("image", _can_open, ImageReader, priority=90)
