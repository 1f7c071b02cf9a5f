"""Reading and converting images: any image -> ``(H, W, 3)`` uint8 RGB, and image files.

This is the lowest layer of the package for pixels: :mod:`pannuke_hf.inference`,
:mod:`pannuke_hf.visualization`, the commands and the demo all convert images here, with the
image processor's own conversion rules (:func:`~pannuke_hf.models.unet_fcn.image_processing_unet_fcn.to_rgb_array`),
so a picture shows exactly what the model sees.

Image files are read with Pillow. Pillow warns above its decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels) and refuses images of more than twice that
(178,956,970 pixels, about 13,377 x 13,377), because a small compressed file can expand to
gigabytes. :func:`read_image` replaces that check with a deliberate
one: the image's size is read from the file's header, the memory that predicting it needs is
estimated (:func:`image_memory_bytes`) and compared with the memory available, and only an image
that fits is decoded, whatever its size. An image that does not fit is refused in one line that
gives its size, the memory it needs and what to use instead (``pannuke-hf slide``, which reads
whole-slide images region by region, or ``pannuke-hf predict --offset`` on crops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .models.unet_fcn.image_processing_unet_fcn import to_rgb_array

__all__ = [
    "ImageTooLargeError",
    "available_memory_bytes",
    "image_memory_bytes",
    "read_image",
    "to_rgb_uint8",
]

#: The size above which Pillow refuses an image (twice its ``MAX_IMAGE_PIXELS``), used as the
#: limit when the available memory is unknown.
PILLOW_MAX_IMAGE_PIXELS: int = 178_956_970


class ImageTooLargeError(ValueError):
    """An image file holds more pixels than the limit the caller allowed."""


def image_memory_bytes(height: int, width: int, channels: int = 7) -> int:
    """Bytes that predicting an ``height x width`` image holds at its peak, an estimate.

    The decoded RGB image and its padded copy (6 bytes / pixel) plus, for each of ``channels``
    stitched float32 maps (class logits + the coverage count, + 4 for a distance-map head), the
    sum, the average and the post-processing's copy (12 bytes / pixel / channel). With 6 labels
    (7 channels): 90 bytes / pixel, ~5.4 GiB for 8,000 x 8,000 pixels.
    """
    return int(height) * int(width) * (6 + 12 * int(channels))


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation now (Linux ``MemAvailable``, else psutil); None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def to_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
    """Any 2-D image as ``(H, W, 3)`` uint8 RGB.

    Accepted: PIL images of any mode; numpy arrays ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
    ``(H, W, 4)``; torch tensors of those shapes. 16-bit images are divided by 257
    (0..65535 -> 0..255); float arrays are read as 0-255 values (the PanNuke ``images.npy``
    convention), or as 0-1 when their maximum is <= 1, as ``UNetFCNImageProcessor`` does. Grey
    images are replicated to three channels; alpha is composited over white (the colour of an
    empty slide).

    An ``(H, W, 3)`` uint8 array comes back as it is (not copied).

    Raises:
        ValueError: wrong shape, empty image, non-finite or out-of-range values (the message
            names ``name``).
    """
    if isinstance(image, Image.Image):
        source = image
        shape = (image.height, image.width)
        if image.mode == "RGB" and 0 not in shape:
            return np.array(image)  # what the rules below return, without a float32 copy
    else:
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        source = np.asarray(image)
        if not (source.ndim == 2 or (source.ndim == 3 and source.shape[-1] in (1, 2, 3, 4))):
            raise ValueError(f"{name}: expected an (H, W[, 1|2|3|4]) image, got shape {source.shape}")
        shape = source.shape[:2]
    if 0 in shape:
        raise ValueError(f"{name}: empty image of shape {shape}")
    if not isinstance(source, Image.Image) and source.dtype.kind == "f" and not np.isfinite(source).all():
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(source))[0])
        raise ValueError(f"{name}: non-finite pixel value at index {pos}")
    if (
        isinstance(source, np.ndarray)
        and source.dtype == np.uint8
        and source.ndim == 3
        and source.shape[-1] == 3
    ):
        # already what the rules below return; skips a float32 copy of large images
        return np.ascontiguousarray(source)
    try:
        # The processor's conversion rules, so pictures show exactly what the model sees.
        values = to_rgb_array(source, index=0, data_format="channels_last")  # (3, H, W) float32
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {str(err).removeprefix('image 0: ')}") from None
    return np.rint(np.moveaxis(values, 0, -1)).astype(np.uint8)


def read_image(path: str | Path, max_pixels: int | None = None, channels: int = 7) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (first frame of multi-page TIFFs).

    Pillow's decompression-bomb check is replaced by a deliberate one: the size is read from the
    file's header, and an image larger than ``max_pixels`` is refused before anything is decoded;
    smaller ones are decoded whatever Pillow's own limit is.

    Args:
        path: a PNG, JPEG, TIFF or other file Pillow reads.
        max_pixels: largest number of pixels accepted. None: as many as predicting fits in the
            memory available now (:func:`image_memory_bytes` with ``channels``), or Pillow's
            limit when the available memory is unknown.
        channels: stitched maps of the model that will predict the image (``num_labels + 1``,
            + 4 with a distance-map head), for the memory estimate.

    Raises:
        ImageTooLargeError: the image is over the limit (the message gives the size, the memory
            needed and what to use instead).
        ValueError: the file cannot be decoded or holds an unsupported image (message names it).
    """
    path = Path(path)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        # Pillow checks its own limit when opening (from the header) and decoding; the size is
        # checked here instead, before anything is decoded.
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            width, height = im.size
            _check_size(path, height, width, max_pixels, channels)
            im.load()
            return to_rgb_uint8(im, name=str(path))
    except ImageTooLargeError:
        raise
    except Exception as err:  # PIL raises many types for broken files
        raise ValueError(f"cannot read image {path}: {err}") from err
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _check_size(path: Path, height: int, width: int, max_pixels: int | None, channels: int) -> None:
    """Raise :class:`ImageTooLargeError` when the image is over the limit (see :func:`read_image`)."""
    needed = image_memory_bytes(height, width, channels)
    if max_pixels is None:
        available = available_memory_bytes()
        if available is None:
            max_pixels = PILLOW_MAX_IMAGE_PIXELS
            budget = f"the {PILLOW_MAX_IMAGE_PIXELS:,}-pixel limit (available memory unknown)"
        else:
            max_pixels = available // image_memory_bytes(1, 1, channels)
            budget = f"the {available / 2**30:.1f} GiB of memory available"
    else:
        budget = f"the limit of {max_pixels:,} pixels"
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"{path}: {width} x {height} pixels needs ~{needed / 2**30:.1f} GiB to predict, over {budget}: "
            "use `pannuke-hf slide` for whole-slide images, or predict regions of it "
            "(`pannuke-hf predict --offset X Y` on crops)"
        )
