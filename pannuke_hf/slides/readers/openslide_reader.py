"""OpenSlide formats (Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, Ventana .bif,
Philips TIFF, generic tiled TIFF, DICOM) through ``openslide-python`` and the ``openslide-bin`` wheel."""

from __future__ import annotations

import os

import numpy as np

from ..reading import SlideError, SlideReader, register_reader  # noqa: F401

#: Extensions OpenSlide is tried on (it sniffs the content itself).
EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".dcm")


class OpenSlideReader(SlideReader):
    """A slide opened with OpenSlide; RGBA regions are composited over white."""

    format = "openslide"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        try:
            import openslide
        except ImportError as err:  # pragma: no cover - depends on the install; the next reader is tried
            raise ImportError(
                "openslide-python / openslide-bin not installed (pip install openslide-python openslide-bin)"
            ) from err
        if openslide.OpenSlide.detect_format(path) is None:
            raise ValueError("not a format OpenSlide knows")
        self._slide = openslide.OpenSlide(path)
        self.level_dimensions = [tuple(int(v) for v in d) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(v) for v in self._slide.level_downsamples]
        props = self._slide.properties
        try:
            mpp_x = float(props["openslide.mpp-x"])
            mpp_y = float(props["openslide.mpp-y"])
            self.mpp = (mpp_x, mpp_y) if mpp_x > 0 and mpp_y > 0 else None
        except (KeyError, ValueError):
            self.mpp = None
        keep = ("openslide.vendor", "openslide.mpp-x", "openslide.mpp-y", "openslide.objective-power")
        self.properties = {k: str(props[k]) for k in keep if k in props}

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            rgba = np.asarray(self._slide.read_region((int(x), int(y)), level, (int(width), int(height))))
        except Exception as err:  # noqa: BLE001  (OpenSlideError: a corrupt tile)
            raise SlideError(
                f"{self.path}: cannot read level {level} at ({x}, {y}) size {width}x{height}: {err}"
            ) from err
        # premultiplied alpha: composite over white, so outside the scanned area is white
        alpha = rgba[..., 3:4].astype(np.uint16)
        if (alpha == 255).all():
            return np.ascontiguousarray(rgba[..., :3])
        rgb = rgba[..., :3].astype(np.uint16) + (255 - alpha)
        return np.minimum(rgb, 255).astype(np.uint8)

    def reopen(self) -> None:
        import openslide

        self._slide.close()
        self._slide = openslide.OpenSlide(self.path)

    def close(self) -> None:
        self._slide.close()


def _can_open(path: str) -> bool:
    # OME-TIFF pyramids live in sub-IFDs OpenSlide does not read: the tifffile reader takes them
    if path.lower().endswith((".ome.tif", ".ome.tiff")):
        return False
    return os.path.splitext(path)[1].lower() in EXTENSIONS


register_reader("openslide", _can_open, OpenSlideReader, priority=10)
