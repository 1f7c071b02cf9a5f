"""Pyramidal TIFF (OME-TIFF with sub-resolutions, tiled TIFF pyramids) through tifffile.

Tiles are read straight from the file; JPEG tiles are decoded with OpenCV (no extra codec
package), other compressions with tifffile's own decoders. µm/px from OME ``PhysicalSizeX`` /
``PhysicalSizeY`` (µm), an Aperio ``MPP =`` description, or the resolution tags in cm/inch.
"""

from __future__ import annotations

import os
import re
import threading

import numpy as np

from ..reading import SlideError, SlideReader, register_reader

EXTENSIONS = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8")


def _mpp_from_metadata(tf, page) -> tuple[float, float] | None:
    ome = tf.ome_metadata
    if ome:
        mx = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
        my = re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', ome)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
        scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit.group(1) if unit else "µm")
        if mx and scale is not None:
            x = float(mx.group(1)) * scale
            return (x, float(my.group(1)) * scale if my else x)
    description = page.description or ""
    match = re.search(r"MPP\s*=\s*([0-9.]+)", description)
    if match:
        value = float(match.group(1))
        return (value, value)
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre in µm
        num, den = tags["XResolution"].value
        if per_unit and num and den and num / den > 1:
            x = per_unit / (num / den)
            ynum, yden = tags["YResolution"].value if "YResolution" in tags else (num, den)
            return (x, per_unit / (ynum / yden))
    return None


class TiffReader(SlideReader):
    """A pyramidal TIFF read with tifffile (the first series and its levels)."""

    format = "tifffile"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        import tifffile

        self._tf = tifffile.TiffFile(path)
        self._lock = threading.Lock()
        series = self._tf.series[0]
        self._pages = [level.keyframe for level in series.levels]
        if len(self._pages) == 1:
            # pyramids stored as plain pages (Aperio-style): the following tiled pages, each smaller
            for page in self._tf.pages[1:]:
                last = self._pages[-1]
                if (
                    page.is_tiled
                    and page.imagewidth < last.imagewidth
                    and page.samplesperpixel == last.samplesperpixel
                    and page.dtype == last.dtype
                ):
                    self._pages.append(page)
        for page in self._pages:
            if page.samplesperpixel not in (1, 3, 4) or page.dtype != np.uint8:
                raise ValueError(
                    f"only 8-bit grey/RGB(A) pyramids are read, got {page.samplesperpixel} x {page.dtype}"
                )
        size = os.path.getsize(path)
        for page in self._pages:
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
            if ends and max(ends) > size:
                raise ValueError(f"truncated: tiles end at byte {max(ends)}, the file has {size}")
        width0 = self._pages[0].imagewidth
        self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
        self.level_downsamples = [width0 / float(w) for w, _ in self.level_dimensions]
        self.mpp = _mpp_from_metadata(self._tf, self._pages[0])
        self.properties = {
            "tifffile.series": str(series.kind or ""),
            "tifffile.levels": str(len(self._pages)),
        }

    def _tile(self, page, index: int) -> np.ndarray:
        import cv2

        offset, count = page.dataoffsets[index], page.databytecounts[index]
        th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.imagewidth)
        if count == 0:
            return np.full((th, tw, 3), 255, dtype=np.uint8)
        with self._lock:
            self._tf.filehandle.seek(offset)
            data = self._tf.filehandle.read(count)
        if len(data) < count:
            raise SlideError(f"{self.path}: tile {index} lies beyond the end of the file (truncated)")
        if page.compression == 7:  # JPEG
            if page.jpegtables:  # abbreviated stream: splice the tables in front
                data = page.jpegtables[:-2] + data[2:]
            try:
                tile = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
            except cv2.error:
                tile = None
            if tile is None:
                raise SlideError(f"{self.path}: corrupt JPEG tile {index}")
            if tile.ndim == 3 and int(page.photometric) != 2:
                tile = cv2.cvtColor(tile, cv2.COLOR_BGR2RGB)  # decoded YCbCr comes back as BGR
            elif tile.ndim == 3:
                tile = tile[..., ::-1]  # an RGB JPEG: OpenCV still returns BGR order
        else:
            try:
                decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as err:  # noqa: BLE001  (codec errors vary by compression)
                raise SlideError(f"{self.path}: cannot decode tile {index} ({err})") from err
            if decoded is None:
                raise SlideError(f"{self.path}: cannot decode tile {index}")
            tile = np.asarray(decoded).reshape(decoded.shape[-3:])
        if tile.ndim == 2:
            tile = tile[..., None]
        if tile.shape[2] == 1:
            tile = np.repeat(tile, 3, axis=2)
        elif tile.shape[2] == 4:
            alpha = tile[..., 3:4].astype(np.uint16)
            tile = np.minimum(tile[..., :3].astype(np.uint16) * alpha // 255 + (255 - alpha), 255).astype(
                np.uint8
            )
        return tile[:th, :tw]

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        d = self.level_downsamples[level]
        lx, ly = int(round(x / d)), int(round(y / d))
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        W, H = self.level_dimensions[level]
        th, tw = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, W)
        per_row = -(-W // tw)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + width, W), min(ly + height, H)
        for ty in range(y0 // th, -(-y1 // th) if y1 > y0 else 0):
            for tx in range(x0 // tw, -(-x1 // tw) if x1 > x0 else 0):
                tile = self._tile(page, ty * per_row + tx)
                gx0, gy0 = tx * tw, ty * th
                sx0, sy0 = max(x0, gx0), max(y0, gy0)
                sx1, sy1 = min(x1, gx0 + tile.shape[1]), min(y1, gy0 + tile.shape[0])
                if sx1 > sx0 and sy1 > sy0:
                    out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[
                        sy0 - gy0 : sy1 - gy0, sx0 - gx0 : sx1 - gx0
                    ]
        return out

    def close(self) -> None:
        self._tf.close()


def _can_open(path: str) -> bool:
    return os.path.basename(path).lower().endswith(EXTENSIONS)


register_reader("tifffile", _can_open, TiffReader, priority=30)
