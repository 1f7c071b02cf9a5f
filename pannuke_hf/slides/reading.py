"""Reading slides: one small reader interface, a registry of formats, and the resolution plan.

A reader (:class:`SlideReader`) exposes a slide's pyramid (level sizes and downsamples), its
µm per pixel when the file records it, and ``read_region``: RGB uint8 pixels of one level, with
everything outside the scanned area white. Each format is one file in
:mod:`pannuke_hf.slides.readers` that calls :func:`register_reader`; :func:`open_slide` tries the
registered readers in order of priority. Handles are never shared between processes: every
DataLoader worker opens its own (:func:`open_slide` is cheap).

The resolution plan (:func:`plan_resolution`) turns the slide's µm/px and the model's into the
pyramid level to read and the exact factor from that level's pixels to model pixels; every
coordinate the pipeline writes is in level-0 pixels of the slide. :func:`read_model_region`
reads a window of the slide in *model pixels* through that plan.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "ResolutionPlan",
    "SlideError",
    "SlideReader",
    "open_slide",
    "plan_resolution",
    "read_model_region",
    "register_reader",
    "registered_readers",
]


class SlideError(RuntimeError):
    """A slide that cannot be used (unreadable, unsupported, no µm/px); the message is one line naming the file."""


class SlideReader:
    """What the slide pipeline needs from a slide file (subclass per format).

    Attributes:
        path: the file.
        format: short name of the reader (``"openslide"``, ``"tifffile"``, ``"image"``).
        level_dimensions: ``[(width, height), ...]`` per pyramid level, level 0 first.
        level_downsamples: level-0 pixels per pixel of each level.
        mpp: µm per level-0 pixel ``(x, y)`` from the file's metadata, or None when it has none.
        properties: metadata worth recording in the summary (str -> str).
    """

    format: str = "?"

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.level_dimensions: list[tuple[int, int]] = []
        self.level_downsamples: list[float] = []
        self.mpp: tuple[float, float] | None = None
        self.properties: dict[str, str] = {}

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 ``(height, width, 3)`` of ``level`` whose top-left pixel is level-0 ``(x, y)``.

        Pixels outside the slide (or outside the scanned area) are white (255).
        """
        raise NotImplementedError

    def reopen(self) -> None:
        """Open the file again after a failed read (OpenSlide handles stay failed once a read fails)."""

    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: (priority, name, can_open(path) -> bool, reader class); lower priority is tried first.
_READERS: list[tuple[int, str, Callable[[str], bool], type[SlideReader]]] = []


def register_reader(
    name: str, can_open: Callable[[str], bool], cls: type[SlideReader], priority: int = 50
) -> None:
    """Add a format: ``can_open(path)`` says (cheaply) whether ``cls(path)`` should be tried."""
    _READERS.append((priority, name, can_open, cls))
    _READERS.sort(key=lambda item: item[0])


def registered_readers() -> list[str]:
    """Names of the registered readers in the order they are tried."""
    _load_builtin_readers()
    return [name for _, name, _, _ in _READERS]


_LOADED = False


def _load_builtin_readers() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from .readers import image_reader, openslide_reader, tiff_reader  # noqa: F401  (they register)


def open_slide(path: str | os.PathLike, reader: str | None = None) -> SlideReader:
    """Open a slide with the first registered reader that accepts it (or the one named ``reader``).

    Raises:
        SlideError: missing file, unsupported format, or a file no reader can open (truncated,
            not a slide); the message names the file.
    """
    _load_builtin_readers()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SlideError(f"{path}: no such file")
    errors = []
    for _, name, can_open, cls in _READERS:
        if reader is not None and name != reader:
            continue
        if reader is None and not can_open(path):
            continue
        try:
            return cls(path)
        except SlideError:
            raise
        except Exception as err:  # noqa: BLE001  (each reader fails in its own way; report them all)
            errors.append(f"{name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    if reader is not None and reader not in [name for _, name, _, _ in _READERS]:
        raise SlideError(f"{path}: unknown reader {reader!r}; known: {', '.join(registered_readers())}")
    if not errors:
        ext = os.path.splitext(path)[1] or "(no extension)"
        raise SlideError(
            f"{path}: unsupported format {ext}; readable: OpenSlide formats (.svs .ndpi .mrxs .scn .bif "
            ".tif/.tiff .dcm ...), OME/pyramidal TIFF, PNG, JPEG"
        )
    raise SlideError(f"{path}: cannot be read as a slide ({'; '.join(errors)})")


# ---------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------

#: Relative tolerance under which two µm/px values count as equal (scanner metadata is rounded).
MPP_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ResolutionPlan:
    """How the slide is read at the model's resolution (written to the summary).

    Attributes:
        slide_mpp: µm per level-0 pixel used (from the metadata or ``--mpp``).
        mpp_source: ``"metadata"`` or ``"--mpp"``.
        model_mpp: µm per pixel the model was trained at.
        level: the pyramid level read (the coarsest at or finer than the model's resolution).
        level_downsample: level-0 pixels per pixel of that level.
        resample: level pixels per model pixel (1.0: read as is; > 1 shrink; < 1 enlarge).
        level0_per_model: level-0 pixels per model pixel (``model_mpp / slide_mpp``).
        model_width, model_height: the slide's size in model pixels.
    """

    slide_mpp: float
    mpp_source: str
    model_mpp: float
    level: int
    level_downsample: float
    resample: float
    level0_per_model: float
    model_width: int
    model_height: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_resolution(reader: SlideReader, model_mpp: float, mpp: float | None = None) -> ResolutionPlan:
    """Choose the level and the exact resampling factor that bring the slide to ``model_mpp``.

    Args:
        reader: the open slide.
        model_mpp: µm/px the model was trained at (``config.mpp``; PanNuke: 0.25).
        mpp: override of the slide's µm/px (``--mpp``); None reads it from the metadata.

    Raises:
        SlideError: no µm/px in the metadata and none given (the message names ``--mpp``), or a
            non-positive value.
    """
    if mpp is not None:
        slide_mpp, source = float(mpp), "--mpp"
    elif reader.mpp is not None:
        slide_mpp, source = float(reader.mpp[0]), "metadata"
        if abs(reader.mpp[0] - reader.mpp[1]) > MPP_TOLERANCE * reader.mpp[0]:
            raise SlideError(
                f"{reader.path}: pixels are not square ({reader.mpp[0]} x {reader.mpp[1]} µm); give --mpp to force one value"
            )
    else:
        raise SlideError(
            f"{reader.path}: the file records no µm per pixel; give it with --mpp (e.g. --mpp 0.25)"
        )
    if not (slide_mpp > 0 and math.isfinite(slide_mpp)) or not (model_mpp > 0 and math.isfinite(model_mpp)):
        raise SlideError(
            f"{reader.path}: µm per pixel must be a positive number (slide {slide_mpp}, model {model_mpp})"
        )
    level, downsample = 0, 1.0
    for index, factor in enumerate(reader.level_downsamples):
        # the coarsest level still at or finer than the model (tolerance: rounded metadata)
        if slide_mpp * factor <= model_mpp * (1 + MPP_TOLERANCE) and factor >= downsample:
            level, downsample = index, float(factor)
    level_mpp = slide_mpp * downsample
    resample = model_mpp / level_mpp
    if abs(resample - 1.0) <= MPP_TOLERANCE:
        resample = 1.0
    level0_per_model = resample * downsample
    width0, height0 = reader.dimensions
    return ResolutionPlan(
        slide_mpp=slide_mpp,
        mpp_source=source,
        model_mpp=float(model_mpp),
        level=level,
        level_downsample=downsample,
        resample=resample,
        level0_per_model=level0_per_model,
        model_width=max(1, int(math.floor(width0 / level0_per_model + 1e-6))),
        model_height=max(1, int(math.floor(height0 / level0_per_model + 1e-6))),
    )


def read_model_region(
    reader: SlideReader, plan: ResolutionPlan, x: int, y: int, width: int, height: int
) -> np.ndarray:
    """RGB uint8 ``(height, width, 3)`` of the slide in model pixels, top-left at model pixel ``(x, y)``.

    Model pixel ``(i, j)`` covers level-0 ``[i * s, (i + 1) * s)`` with ``s`` =
    ``plan.level0_per_model``. At ``resample == 1`` the level's pixels are returned as they are;
    otherwise the level is resampled by exactly that factor (OpenCV, bilinear, pixel centres mapped
    onto pixel centres; an area average first when shrinking, against aliasing). Outside the
    slide is white.
    """
    import cv2

    d, r = plan.level_downsample, plan.resample
    if r == 1.0:
        return reader.read_region(int(round(x * d)), int(round(y * d)), plan.level, width, height)
    # level pixels covering the model window, plus one pixel of context for the interpolation
    lx0 = int(math.floor(x * r)) - 2
    ly0 = int(math.floor(y * r)) - 2
    lx1 = int(math.ceil((x + width) * r)) + 2
    ly1 = int(math.ceil((y + height) * r)) + 2
    src = reader.read_region(int(round(lx0 * d)), int(round(ly0 * d)), plan.level, lx1 - lx0, ly1 - ly0)
    if r > 1.0:
        # shrinking: blur so that each model pixel averages the level pixels it covers
        sigma = 0.5 * math.sqrt(r * r - 1.0)
        src = cv2.GaussianBlur(src, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    # model pixel centre i + 0.5 (global) -> level coordinate (x + i + 0.5) * r -> index - 0.5 - lx0
    matrix = np.array(
        [[r, 0.0, (x + 0.5) * r - 0.5 - lx0], [0.0, r, (y + 0.5) * r - 0.5 - ly0]], dtype=np.float64
    )
    return cv2.warpAffine(
        src,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(255, 255, 255),
    )
