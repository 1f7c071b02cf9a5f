"""Image processor of the UNet-FCN model: any image -> 8-bit RGB -> windows at the training scale ->
resize (OpenCV) -> normalise; label maps -> int64; model outputs -> label maps or nuclei.

This file is copied next to saved checkpoints (``trust_remote_code``), so it imports nothing from
``pannuke_hf``. Its default mean / std are the ImageNet statistics of transformers on the 0-255
scale, which are the reference model's; ``pannuke_hf`` sets them from ``pannuke_hf.constants`` on
import, and saved ``preprocessor_config.json`` files always carry them.

Instance post-processing policy (nuclei from a model's outputs; scipy, scikit-image and OpenCV are
imported inside the functions that use them):

* **Semantic path** (any checkpoint, :func:`semantic_to_instances`): the arg-max label map; for
  each nucleus class, its pixels form 8-connected components; touching nuclei of one class are
  split by a marker-controlled watershed on the Euclidean distance transform of the class mask,
  with one marker per *h*-maximum of the distance (``h = 1.5`` px: two discs whose neck is more
  than 1.5 px thinner than their radius are split, an elongated nucleus keeps one marker because
  its distance ridge has no dip). A component without such a maximum keeps one marker.
* **Distance-map (hv) path** (models with ``instance_head="hv"``, :func:`hv_to_instances`):
  nucleus mask = nucleus probability > 0.5; the horizontal map's Sobel derivative along x and the
  vertical map's along y (OpenCV, kernel 21, each scaled by its largest magnitude) are negative
  only where the offsets jump back, i.e. between nuclei and at their outer edge; the energy is the
  larger of the two scaled jumps; markers = mask pixels whose energy is below 0.15, opened, as
  8-connected components; a watershed of the energy from those markers inside the mask gives
  the nuclei. The class of a nucleus is the majority vote of the type map's arg-max over its
  pixels, the most frequent nucleus class when background wins (which is the same as the most
  frequent nucleus class); a nucleus on which no pixel votes for a nucleus class takes the nucleus
  class of highest mean probability.
* Both paths: nuclei smaller than ``min_size`` pixels (10 at 40x, 3 at 20x) are dropped; the score
  is the mean probability of the nucleus's class over its pixels; ids are 1..K, numbered in the
  raster order (row by row, then column) of each nucleus's first pixel, so they do not depend on
  the order of the classes or of the watershed's internal labels; 0 means "no nucleus".
"""

import math
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

#: Largest value of a 16-bit image; dividing by 257 maps 0..65535 exactly onto 0..255.
_UINT16_MAX = 65535
_UINT16_TO_UINT8 = 257.0


class UNetFCNImageProcessorKwargs(ImagesKwargs, total=False):
    """Keyword arguments of [`UNetFCNImageProcessor`] beyond transformers' ``ImagesKwargs``.

    tile_size: side, in image pixels, of the patches the model was trained on (PanNuke: 256 at
        40x): one window of the image; each window is resized to ``size``.
    tile_overlap: pixels shared by neighbouring windows (None: a third of ``tile_size``).
    do_tile: cut every image into windows of ``tile_size`` pixels at the training scale (True),
        or resize the whole image to ``size`` (False: the aspect ratio and scale are lost).
    do_reduce_labels: label 0 becomes 255 (ignored) and every other label is lowered by 1, as in
        transformers' segmentation processors (for datasets whose label 0 is "unlabelled").
    """

    tile_size: int
    tile_overlap: int | None
    do_tile: bool
    output_stride: int
    do_reduce_labels: bool


def _to_numpy(image) -> tuple[np.ndarray, str]:
    """Return ``(array, kind)`` with kind ``"pil"``, ``"numpy"`` or ``"torch"``; PIL images keep their mode's values."""
    if isinstance(image, PIL.Image.Image):
        return _pil_to_array(image), "pil"
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy(), "torch"
    if isinstance(image, np.ndarray):
        return image, "numpy"
    raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    """Pixel values of a PIL image as (H, W) or (H, W, C); 16-bit modes come back as uint16."""
    mode = image.mode
    if mode in ("RGB", "L", "RGBA", "LA", "F"):
        return np.asarray(image)
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        return np.asarray(image).astype(np.int64)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "P":
        return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, ...


def _channels_last(array: np.ndarray, kind: str, index: int, data_format=None) -> np.ndarray:
    """Bring a 2-D or 3-D image array to (H, W, C) with C in 1..4.

    ``data_format`` ("channels_first" / "channels_last") decides; without it, torch tensors are
    read as (C, H, W) when possible and arrays as (H, W, C) when possible.
    """
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image {index}: expected a 2-D or 3-D array, got shape {array.shape}")
    data_format = getattr(data_format, "value", data_format)
    if data_format in ("channels_first", "channels_last"):
        array = np.moveaxis(array, 0, -1) if data_format == "channels_first" else array
        if array.shape[-1] not in (1, 2, 3, 4):
            raise ValueError(f"image {index}: {data_format} array of shape {array.shape} has no 1-4 channels")
        return array
    first, last = array.shape[0] in (1, 2, 3, 4), array.shape[-1] in (1, 2, 3, 4)
    if kind == "torch" and first:
        return np.moveaxis(array, 0, -1)
    if last:
        return array
    if first:
        return np.moveaxis(array, 0, -1)
    raise ValueError(f"image {index}: cannot find a channel axis of size 1-4 in shape {array.shape}")


def _to_unit_255(array: np.ndarray, index: int) -> np.ndarray:
    """Map pixel values to float32 on the 0-255 scale.

    uint8 as is; uint16 / int16 divided by 257; other integers as is when <= 255, else as 16-bit;
    bool to 0 / 255; floats as is when their maximum exceeds 1, else multiplied by 255.
    """
    if array.dtype == np.bool_:
        return array.astype(np.float32) * 255.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"image {index}: contains NaN or infinite values")
        values = array.astype(np.float32)
        if values.size and values.max() <= 1.0:
            values = values * 255.0
    elif np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float32)
        sixteen_bit = array.dtype in (np.uint16, np.int16) or (array.size and array.max() > 255)
        if array.size and array.max() > _UINT16_MAX:
            raise ValueError(f"image {index}: integer values up to {array.max()} exceed the 16-bit range")
        if sixteen_bit:
            values = values / _UINT16_TO_UINT8
    else:
        raise TypeError(f"image {index}: unsupported dtype {array.dtype}")
    if values.size and (values.min() < 0 or values.max() > 255.0):
        raise ValueError(
            f"image {index}: values must lie in 0-255 (or 0-1 for floats), got {values.min()}..{values.max()}"
        )
    return values


def to_rgb_array(image, index: int = 0, data_format=None) -> np.ndarray:
    """Convert one image (PIL, numpy or torch; RGB, RGBA, grayscale, 16-bit, float) to RGB.

    Args:
        image: a PIL image of any mode, or an array / tensor (H, W), (H, W, C) or (C, H, W) with C in
            1-4 (tensors are read channels-first when ambiguous, arrays channels-last).
        index: position of the image in its batch, for error messages.
        data_format: "channels_first" or "channels_last" for arrays / tensors; None guesses.

    Returns:
        (3, H, W) float32 on the 0-255 scale. Alpha is composited onto white (slide background).
    """
    array, kind = _to_numpy(image)
    array = _channels_last(array, kind, index, None if kind == "pil" else data_format)
    values = _to_unit_255(array, index)
    channels = values.shape[-1]
    if channels in (2, 4):
        alpha = values[..., -1:] / 255.0
        values = values[..., :-1] * alpha + 255.0 * (1.0 - alpha)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(np.moveaxis(values, -1, 0), dtype=np.float32)


def to_label_array(segmentation_map, index: int = 0) -> np.ndarray:
    """Convert one label map (PIL "L"/"P"/"I"/"I;16", integer or integral float array/tensor) to (H, W) int64.

    Raises ``ValueError`` naming ``index`` for non-integral, negative or non-2-D maps.
    """
    if isinstance(segmentation_map, PIL.Image.Image):
        array = np.asarray(segmentation_map)
    else:
        array, _ = _to_numpy(segmentation_map)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise ValueError(f"segmentation map {index}: expected a (H, W) label map, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise ValueError(f"segmentation map {index}: float labels must be finite whole numbers")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"segmentation map {index}: unsupported dtype {array.dtype}")
    labels = array.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"segmentation map {index}: labels must be >= 0, got {labels.min()}")
    return labels


# ---------------------------------------------------------------------------------------------
# Windows (tiles) and the one resize rule, shared with ``pannuke_hf.inference``
# ---------------------------------------------------------------------------------------------

#: Side, in image pixels, of the patches the model was trained on (PanNuke: 256 x 256 at 40x).
DEFAULT_TILE_SIZE = 256
#: Total downsampling of the 5-stage UNet-FCN: window starts fall on this grid of model pixels
#: (the processor's default ``output_stride``; smaller UNet-FCNs have strides that divide it).
UNET_FCN_STRIDE = 16


def tile_positions(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of ``length`` pixels.

    Windows of ``tile`` pixels every ``stride`` pixels; the last one is moved back to end at the
    edge so the whole axis is covered. An axis not longer than ``tile`` gets one window at 0.
    """
    if tile < 1 or stride < 1:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be >= 1")
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


@dataclass
class TilingPlan:
    """How one image is cut: padded size, tile size and the top-left corner of every tile.

    Attributes:
        height, width: size of the original image.
        padded_height, padded_width: size after padding (at least one tile in each dimension).
        tile: tile side in image pixels.
        corners: ``(y, x)`` top-left corner of every tile in the padded image, row by row.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile: int
    corners: list = field(default_factory=list)


def plan_tiles(height: int, width: int, tile: int, overlap: int, align: int = 1) -> TilingPlan:
    """Plan the tiles of an ``height x width`` image.

    Args:
        height, width: image size in pixels.
        tile: tile side in pixels.
        overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile``.
        align: the stride is rounded down to a multiple of this (when that leaves it >= 1), so
            tiles fall on the model's pooling grid.

    Returns:
        the :class:`TilingPlan`.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile_size) = [0, {tile}), got {overlap}")
    stride = tile - overlap
    if align > 1 and stride >= align:
        stride -= stride % align
    ph, pw = max(height, tile), max(width, tile)
    ys = tile_positions(ph, tile, stride)
    xs = tile_positions(pw, tile, stride)
    return TilingPlan(height, width, ph, pw, tile, [(y, x) for y in ys for x in xs])


def stride_align(model_stride: int, scale: float) -> int:
    """Window starts, in image pixels, that fall on the model's pooling grid: ``model_stride / scale``.

    1 (no alignment) when that is not a whole number.
    """
    align = model_stride / scale
    return int(align) if align >= 1 and align == int(align) else 1


def pad_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an (H, W[, C]) image at the bottom / right to at least (height, width).

    Reflection keeps tissue-like context at the border; numpy reflects repeatedly when the pad is
    wider than the image; a single row or column cannot be reflected, so it is repeated.
    """
    ph, pw = height - image.shape[0], width - image.shape[1]
    if ph <= 0 and pw <= 0:
        return image
    mode = "reflect" if image.shape[0] > 1 and image.shape[1] > 1 else "edge"
    pad = ((0, max(ph, 0)), (0, max(pw, 0))) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, mode=mode)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image with OpenCV ``INTER_LINEAR``: the one resize rule of the package.

    Training, evaluation and serving (this processor, ``pannuke_hf.inference``, the pipeline)
    all resize this way, as the reference's ``mmcv.imresize``: half-pixel centres, no
    antialiasing, 8-bit output rounded by OpenCV.
    """
    import cv2

    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(np.ascontiguousarray(image), (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an (H, W) integer label map with OpenCV ``INTER_NEAREST`` (source pixel ``floor(x * in / out)``).

    The training transform's rule for labels (the reference's ``mmcv.imresize(..., "nearest")``),
    not PIL's centre-aligned nearest. Returns the input's dtype (int64 and other types OpenCV
    cannot resize go through int32); values such as 255 are kept exactly.
    """
    import cv2

    if labels.shape[:2] == (height, width):
        return labels
    kind = labels.dtype
    native = kind in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32)
    source = np.ascontiguousarray(labels if native else labels.astype(np.int32))
    resized = cv2.resize(source, (int(width), int(height)), interpolation=cv2.INTER_NEAREST)
    return resized if native else resized.astype(kind)


def window_input_size(size, tile_height: int, tile_width: int) -> tuple:
    """Model-input size ``(height, width)`` of a ``tile_height x tile_width`` window under a ``size`` setting.

    ``size`` is a dict or ``SizeDict`` with ``height`` and ``width`` (used as given) or
    ``shortest_edge`` / ``longest_edge`` (the window's aspect ratio kept), an int (a square), or
    an (height, width) pair.

    Raises:
        ValueError: a ``size`` of none of these forms (one line saying what is expected).
    """
    get = size.get if hasattr(size, "get") else (lambda key, default=None: getattr(size, key, default))
    if isinstance(size, int):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    if size is not None and get("height") and get("width"):
        return int(get("height")), int(get("width"))
    shortest = None if size is None else get("shortest_edge")
    longest = None if size is None else get("longest_edge")
    if shortest or longest:
        factor = (
            shortest / min(tile_height, tile_width) if shortest else longest / max(tile_height, tile_width)
        )
        if shortest and longest:
            factor = min(factor, longest / max(tile_height, tile_width))
        return max(1, round(tile_height * factor)), max(1, round(tile_width * factor))
    raise ValueError(
        "size must be {'height': H, 'width': W}, {'shortest_edge': S} or {'longest_edge': L} "
        f"(model-input pixels of one window), got {_set_fields(size)!r}"
    )


def _set_fields(size):
    """The fields of a size setting that are set, for messages (``SizeDict`` lists every field)."""
    fields = dict(size) if hasattr(size, "keys") else getattr(size, "__dict__", None)
    return size if fields is None else {key: value for key, value in fields.items() if value is not None}


def window_logits(
    logits: torch.Tensor, input_size: tuple, valid_size: tuple, tile_size: tuple
) -> torch.Tensor:
    """Model outputs of a batch of windows -> maps on the windows' image pixels.

    Args:
        logits: (B, C, h, w) maps the model returned for inputs of ``input_size`` (maps at another
            size are first resized bilinearly to it).
        input_size: (height, width) of the model input, padding included.
        valid_size: (height, width) of the resized window inside the input (the rest is padding).
        tile_size: (height, width) of the window in image pixels.

    Returns:
        (B, C, tile_height, tile_width) float32 (bilinear, half-pixel centres).
    """
    if tuple(logits.shape[-2:]) != tuple(input_size):
        logits = F.interpolate(logits.float(), size=tuple(input_size), mode="bilinear", align_corners=False)
    logits = logits[..., : valid_size[0], : valid_size[1]].float()
    if tuple(valid_size) != tuple(tile_size):
        logits = F.interpolate(logits, size=tuple(tile_size), mode="bilinear", align_corners=False)
    return logits


def stitch_windows(windows: torch.Tensor, plan: TilingPlan) -> torch.Tensor:
    """Average the (N, C, tile, tile) maps of a plan's N windows over their overlaps: (C, H, W) float32."""
    if len(windows) != len(plan.corners):
        raise ValueError(f"expected {len(plan.corners)} windows for this image, got {len(windows)}")
    tile = plan.tile
    total = torch.zeros((windows.shape[1], plan.padded_height, plan.padded_width))
    count = torch.zeros((plan.padded_height, plan.padded_width))
    for (y, x), window in zip(plan.corners, windows):
        total[:, y : y + tile, x : x + tile] += window.float().cpu()
        count[y : y + tile, x : x + tile] += 1
    return (total / count)[:, : plan.height, : plan.width]


def _reduce_labels(labels: np.ndarray) -> np.ndarray:
    """transformers' ``do_reduce_labels``: 0 -> 255 (ignored), every other label minus 1, 255 kept."""
    reduced = labels - 1
    reduced[(labels == 0) | (labels == 255)] = 255
    return reduced


def _flatten(inputs, name: str, item_ndims: int) -> list:
    """A single image / map or a batch (list, tuple, or an array with one more dimension) -> list."""
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise ValueError(f"{name}: got an empty batch")
        return list(inputs)
    if isinstance(inputs, PIL.Image.Image):
        return [inputs]
    if isinstance(inputs, (np.ndarray, torch.Tensor)):
        if inputs.ndim == item_ndims + 1:
            return list(inputs)
        return [inputs]
    raise TypeError(
        f"{name}: expected PIL images, numpy arrays or torch tensors, got {type(inputs).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Instance post-processing (policy in the module docstring)
# ---------------------------------------------------------------------------------------------

#: Height (in pixels of distance) by which a maximum of the distance transform must rise above
#: the saddle joining it to a higher one to seed its own nucleus (semantic path).
WATERSHED_H = 1.5
#: Sobel kernel size used on the distance maps (hv path), as HoVer-Net and CellViT use it.
HV_SOBEL_KSIZE = 21
#: Energy (scaled Sobel jump, 0-1) below which a nucleus pixel may seed a marker (hv path).
HV_MARKER_ENERGY = 0.15
#: Nucleus-pixel probability above which a pixel belongs to a nucleus (hv path).
NUCLEUS_THRESHOLD = 0.5

_EIGHT = np.ones((3, 3), dtype=bool)


def _as_probabilities(probabilities, name: str) -> np.ndarray:
    """(C, H, W) finite float32 with C >= 2, or a ``ValueError`` naming ``name``."""
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu().float().numpy()
    array = np.asarray(probabilities, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] < 2:
        raise ValueError(f"{name}: expected (num_labels >= 2, H, W) probabilities, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _as_map(values, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of exactly ``shape`` with finite values, or a ``ValueError`` naming ``name``."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    array = np.asarray(values, dtype=np.float32)
    if array.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _renumber_in_raster_order(instances: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop ids covering fewer than ``min_size`` pixels and number the rest 1..K by first pixel.

    Returns ``(instance map int32, old id of each new id 1..K)``.
    """
    flat = instances.ravel()
    areas = np.bincount(flat)
    ids, first = np.unique(flat, return_index=True)
    keep = (ids > 0) & (areas[ids] >= min_size)
    old = ids[keep][np.argsort(first[keep], kind="stable")]
    lut = np.zeros(len(areas), dtype=np.int32)
    lut[old] = np.arange(1, len(old) + 1, dtype=np.int32)
    return lut[instances], old


def _segments(instances: np.ndarray, classes: np.ndarray, probabilities: np.ndarray) -> list[dict]:
    """``segments_info`` of nuclei 1..K of class ``classes[k - 1]``: score = mean class probability."""
    count = len(classes)
    if count == 0:
        return []
    pixel_class = np.concatenate([[0], classes])[instances]
    pixel_prob = np.take_along_axis(probabilities, pixel_class[None], axis=0)[0]
    flat = instances.ravel()
    sums = np.bincount(flat, weights=pixel_prob.ravel(), minlength=count + 1)[1:]
    areas = np.bincount(flat, minlength=count + 1)[1:]
    scores = sums / areas
    return [
        {"id": k + 1, "label_id": int(classes[k]), "score": float(scores[k]), "was_fused": False}
        for k in range(count)
    ]


def semantic_to_instances(
    probabilities, min_size: int = 10, watershed: bool = True, h: float = WATERSHED_H
) -> tuple[np.ndarray, list[dict]]:
    """Nuclei from class probabilities: per-class connected components split by a distance watershed.

    Args:
        probabilities: (C, H, W) class probabilities (softmax of the logits at the output size);
            label 0 is background, labels 1..C-1 are nucleus classes.
        min_size: nuclei with fewer pixels are dropped (10 at 40x).
        watershed: split touching nuclei of one class (marker-controlled watershed of the distance
            transform, one marker per ``h``-maximum); False keeps plain connected components.
        h: see :data:`WATERSHED_H`.

    Returns:
        ``(instance map, segments_info)``: (H, W) int32, 0 = no nucleus, nuclei 1..K in raster
        order of their first pixel; one ``{"id", "label_id", "score", "was_fused": False}`` per
        nucleus, ``score`` the mean probability of its class over its pixels.
    """
    from scipy import ndimage

    probs = _as_probabilities(probabilities, "probabilities")
    labels = probs.argmax(axis=0)
    instances = np.zeros(labels.shape, dtype=np.int64)
    class_of_raw = [0]  # class of every provisional id
    for label in range(1, probs.shape[0]):
        mask = labels == label
        if not mask.any():
            continue
        components, count = ndimage.label(mask, structure=_EIGHT)
        if watershed:
            components = _split_touching(mask, components, count, h)
        # provisional ids of this class follow those of the previous classes
        instances[mask] = components[mask] + (len(class_of_raw) - 1)
        class_of_raw += [label] * int(components.max())
    instances, old = _renumber_in_raster_order(instances, min_size)
    classes = np.asarray(class_of_raw, dtype=np.int64)[old]
    return instances, _segments(instances, classes, probs)


def _split_touching(mask: np.ndarray, components: np.ndarray, count: int, h: float) -> np.ndarray:
    """Split components of ``mask`` by a watershed of ``-distance`` from the distance's ``h``-maxima.

    Works component by component inside its bounding box. Two cheap tests skip most nuclei, which
    are alone: a component whose distance never reaches ``h + 1`` cannot hold two maxima ``h``
    apart (every pixel is at least 1 from the border), and one whose area is under 1.3 times the
    disc of its largest inscribed radius is a single round nucleus (two touching discs of radius
    ``r`` cover about 2 such discs, an ellipse ``b / a`` of them). Returns the components with the
    extra pieces numbered from ``count + 1``.
    """
    import cv2
    from scipy import ndimage
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    # exact Euclidean distance to the nearest pixel outside the mask (OpenCV's is ~3x scipy's speed)
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    areas = np.bincount(components.ravel(), minlength=count + 1)
    pieces = components.astype(np.int64)
    next_id = count + 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None or areas[index] <= 1.3 * np.pi * (h + 1) ** 2:
            continue
        own = components[box] == index
        inside = np.where(own, distance[box], 0.0)
        radius = float(inside.max())
        if radius < h + 1 or areas[index] <= 1.3 * np.pi * radius**2:
            continue
        # h-maxima: the regional maxima of the distance lowered by h and rebuilt under itself;
        # peaks whose saddle to a higher peak is less than h deep merge into one plateau.
        dome = reconstruction(inside - h, inside, method="dilation")
        markers, found = ndimage.label(local_maxima(dome) & own, structure=_EIGHT)
        if found <= 1:
            continue
        split = watershed(-inside, markers, mask=own, connectivity=2)
        # piece 1 keeps the component's id, the others get new ones
        target = pieces[box]
        target[own] = np.where(split[own] == 1, index, next_id + split[own] - 2)
        next_id += found - 1
    return pieces


def hv_to_instances(
    type_probabilities,
    nuclei_probability,
    hv,
    min_size: int = 10,
    nucleus_threshold: float = NUCLEUS_THRESHOLD,
) -> tuple[np.ndarray, list[dict]]:
    """Nuclei from a distance-map (HoVer-style) head: nucleus mask, Sobel energy, marker watershed.

    Args:
        type_probabilities: (C, H, W) class probabilities (the type map; 0 = background).
        nuclei_probability: (H, W) probability that a pixel belongs to a nucleus.
        hv: (2, H, W) distance maps: channel 0 the horizontal (x) offset of each nucleus pixel from
            its nucleus's centre, channel 1 the vertical (y) one, both scaled to [-1, 1].
        min_size: nuclei with fewer pixels are dropped (10 at 40x).
        nucleus_threshold: a pixel is a nucleus pixel when its probability exceeds this.

    Returns:
        ``(instance map, segments_info)`` as :func:`semantic_to_instances`; the class of a nucleus
        is the majority vote of the type map over its pixels (background excluded, see the module
        docstring), its score the mean probability of that class over the nucleus.
    """
    import cv2
    from scipy import ndimage
    from skimage.segmentation import watershed

    probs = _as_probabilities(type_probabilities, "type_probabilities")
    shape = probs.shape[1:]
    nuclei = _as_map(nuclei_probability, "nuclei_probability", shape)
    offsets = _as_map(hv, "hv", (2, *shape))
    mask = nuclei > nucleus_threshold
    if not mask.any():
        return np.zeros(shape, dtype=np.int32), []

    # Offsets rise through a nucleus and fall back where the next nucleus (or the background)
    # begins: the scaled negative part of the derivative marks nucleus borders. Offsets outside
    # the nucleus mask mean nothing and are read as 0.
    offsets = offsets * mask
    energy = np.zeros(shape, dtype=np.float32)
    for channel, (dx, dy) in enumerate(((1, 0), (0, 1))):
        gradient = cv2.Sobel(offsets[channel], cv2.CV_32F, dx, dy, ksize=HV_SOBEL_KSIZE)
        scale = float(np.abs(gradient).max())
        if scale > 0:
            np.maximum(energy, np.clip(-gradient / scale, 0.0, 1.0), out=energy)

    components, count = ndimage.label(mask, structure=_EIGHT)
    seeds = ndimage.binary_opening(mask & (energy < HV_MARKER_ENERGY), structure=_EIGHT)
    markers, found = ndimage.label(seeds, structure=_EIGHT)
    has_marker = np.zeros(count + 1, dtype=bool)
    has_marker[components[markers > 0]] = True
    lonely = mask & ~has_marker[components]
    markers[lonely] = found + components[lonely]
    instances = watershed(energy, markers, mask=mask, connectivity=2)

    instances, _ = _renumber_in_raster_order(instances, min_size)
    count = int(instances.max())
    if count == 0:
        return instances, []
    num_labels = probs.shape[0]
    type_map = probs.argmax(axis=0)
    votes = np.bincount(
        (instances.astype(np.int64) * num_labels + type_map).ravel(), minlength=(count + 1) * num_labels
    ).reshape(count + 1, num_labels)[1:, 1:]
    classes = 1 + votes.argmax(axis=1)  # ties: the lower label
    unvoted = np.flatnonzero(votes.sum(axis=1) == 0)
    if len(unvoted):
        flat = instances.ravel()
        means = np.stack(
            [np.bincount(flat, weights=p.ravel(), minlength=count + 1)[1:] for p in probs[1:]], axis=1
        )
        classes[unvoted] = 1 + means[unvoted].argmax(axis=1)
    return instances, _segments(instances, classes, probs)


def _output_field(outputs, name: str):
    """``outputs.name`` for ``ModelOutput`` / objects, ``outputs[name]`` for plain dicts; None if absent."""
    value = getattr(outputs, name, None)
    if value is None and isinstance(outputs, dict):
        value = outputs.get(name)
    return value


def _resized(maps: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(C, h, w) float maps, resized bilinearly (half-pixel centres) to ``size`` when given."""
    maps = maps.detach().float()
    if size is None or tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]


class UNetFCNImageProcessor(PilBackend):
    r"""Prepares images (and label maps) for [`UNetFCNForSemanticSegmentation`].

    Steps: convert to 8-bit RGB (RGBA / LA composited on white, grayscale repeated, 16-bit
    divided by 257, floats in 0-1 multiplied by 255, then rounded to 8 bits as training images
    are); cut the image into windows of ``tile_size`` image pixels (default 256, the PanNuke
    patch) that overlap by ``tile_overlap`` (default a third), the image reflected at its
    bottom / right edge when smaller than a window; resize every window to ``size`` (default
    512x512) with OpenCV ``INTER_LINEAR`` (label maps ``INTER_NEAREST``), the rule of the
    training transform; normalise with ``image_mean`` / ``image_std`` (0-255 scale).

    So every image reaches the model at the scale of training (``size / tile_size`` model
    pixels per image pixel, whatever the image's size or aspect ratio): a PanNuke patch gives
    one window, a 512 x 384 region six. ``post_process_semantic_segmentation`` and
    ``post_process_instance_segmentation`` with ``target_sizes`` (the images' sizes) average the
    windows' logits over their overlaps, as ``pannuke_hf.inference.predict_image`` does, so the
    ``image-segmentation`` pipeline, this processor and ``pannuke-hf predict`` give the same
    result. ``do_tile=False`` resizes the whole image to ``size`` instead (scale and aspect ratio
    lost); ``do_resize=False`` passes the whole image at its own size.

    ``segmentation_maps`` become ``labels`` (int64, 255 kept as the ignore value; windows are
    padded with 255).

    Returns a ``BatchFeature`` with ``pixel_values`` (N, 3, H, W) float32, N = the number of
    windows of all images in order, and, when maps are given, ``labels`` (N, H, W) int64.
    """

    valid_kwargs = UNetFCNImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 512, "width": 512}
    default_to_square = True
    do_resize = True
    do_rescale = False
    rescale_factor = 1.0
    do_normalize = True
    do_convert_rgb = True
    do_tile = True
    tile_size = DEFAULT_TILE_SIZE
    tile_overlap = None
    output_stride = UNET_FCN_STRIDE
    do_reduce_labels = False
    # Reference statistics on the 0-255 scale (= transformers' ImageNet values x 255).
    image_mean = tuple(round(255.0 * m, 6) for m in IMAGENET_DEFAULT_MEAN)
    image_std = tuple(round(255.0 * s, 6) for s in IMAGENET_DEFAULT_STD)

    def __init__(self, **kwargs):
        super().__init__(**_as_float_statistics(kwargs))
        window_input_size(self.size, self.tile_size, self.tile_size)  # a one-line error now, not later

    def preprocess(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        """Process images and optional label maps.

        Args:
            images: one image or a batch (list, or an array / tensor with a leading batch axis) of
                PIL images, numpy arrays or torch tensors of any of the forms of ``to_rgb_array``.
            segmentation_maps: optional label map(s) (H, W), same count and sizes as the images.
            **kwargs: overrides of the processor's attributes (``size``, ``do_resize``,
                ``image_mean``, ``tile_size``, ``do_reduce_labels``, ``return_tensors``, ...).

        Returns:
            ``BatchFeature`` with ``pixel_values`` and, when maps are given, ``labels``.
        """
        return super().preprocess(images, segmentation_maps, **_as_float_statistics(kwargs))

    # ------------------------------------------------------------------------------------------
    # Windows
    # ------------------------------------------------------------------------------------------

    def _window(self, tile_size=None, tile_overlap=None, size=None) -> tuple:
        """(tile side, overlap, model-input (height, width) of a window) from the settings."""
        tile = int(self.tile_size if tile_size is None else tile_size)
        if tile < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile}")
        overlap = self.tile_overlap if tile_overlap is None else tile_overlap
        overlap = round(tile / 3) if overlap is None else int(overlap)
        if not 0 <= overlap < tile:
            raise ValueError(f"tile_overlap must be in [0, tile_size) = [0, {tile}), got {overlap}")
        return tile, overlap, window_input_size(self.size if size is None else size, tile, tile)

    def tile_plan(self, height: int, width: int, tile_size=None, tile_overlap=None, size=None) -> TilingPlan:
        """The windows of an ``height x width`` image under this processor's (or the given) settings.

        Window starts are aligned to the model's pooling grid (``output_stride`` model pixels), as
        ``pannuke_hf.inference`` aligns them.
        """
        tile, overlap, (in_h, _) = self._window(tile_size, tile_overlap, size)
        stride = int(self.output_stride or 1)
        return plan_tiles(height, width, tile, overlap, align=stride_align(stride, in_h / tile))

    def _tiles(self, do_resize, do_tile) -> bool:
        return bool(do_resize) and bool(do_tile)

    def _preprocess_image_like_inputs(
        self,
        images,
        segmentation_maps=None,
        do_resize: bool = True,
        size=None,
        resample=None,
        do_rescale: bool = False,
        rescale_factor: float = 1.0,
        do_normalize: bool = True,
        image_mean=None,
        image_std=None,
        return_tensors=None,
        input_data_format=None,
        do_tile: bool = True,
        tile_size=None,
        tile_overlap=None,
        do_reduce_labels: bool = False,
        **kwargs,
    ) -> BatchFeature:
        if do_resize:
            window_input_size(size, 1, 1)  # a one-line error for an unusable size
        if resample is not None and int(resample) != int(PILImageResampling.BILINEAR):
            raise ValueError(
                f"resample={resample!r}: images are resized with one rule, bilinear (OpenCV INTER_LINEAR, "
                "as in training), label maps nearest; leave resample unset or BILINEAR"
            )
        tiled = self._tiles(do_resize, do_tile)
        if tiled:
            tile, _, (in_h, in_w) = self._window(tile_size, tile_overlap, size)
        mean = np.asarray(image_mean, dtype=np.float32).reshape(1, 1, -1) if do_normalize else None
        std = np.asarray(image_std, dtype=np.float32).reshape(1, 1, -1) if do_normalize else None

        def normalise(rgb: np.ndarray) -> np.ndarray:
            # (H, W, 3) uint8 -> (3, H, W) float32, in the order of the training transform's table
            values = rgb.astype(np.float32)
            if do_rescale:
                values = values * np.float32(rescale_factor)
            if mean is not None:
                values = (values - mean) / std
            return np.ascontiguousarray(values.transpose(2, 0, 1))

        pixel_values, original_sizes, plans = [], [], []
        for index, image in enumerate(_flatten(images, "images", item_ndims=3)):
            rgb = to_rgb_array(image, index, input_data_format)
            # 8-bit, as the training images: the model never saw values between two levels
            rgb = np.rint(np.moveaxis(rgb, 0, -1)).astype(np.uint8)
            height, width = rgb.shape[:2]
            original_sizes.append((height, width))
            if tiled:
                plan = self.tile_plan(height, width, tile_size, tile_overlap, size)
                plans.append(plan)
                padded = pad_image(rgb, plan.padded_height, plan.padded_width)
                for y, x in plan.corners:
                    window = padded[y : y + tile, x : x + tile]
                    pixel_values.append(normalise(resize_image(window, in_h, in_w)))
            elif do_resize:
                pixel_values.append(normalise(resize_image(rgb, *window_input_size(size, height, width))))
            else:
                pixel_values.append(normalise(rgb))
        data = {"pixel_values": pixel_values}

        if segmentation_maps is not None:
            maps = _flatten(segmentation_maps, "segmentation_maps", item_ndims=2)
            if len(maps) != len(original_sizes):
                raise ValueError(f"got {len(original_sizes)} images but {len(maps)} segmentation maps")
            labels = []
            for index, segmentation_map in enumerate(maps):
                label = to_label_array(segmentation_map, index)
                if label.shape != original_sizes[index]:
                    raise ValueError(
                        f"segmentation map {index} has size {label.shape}, its image {original_sizes[index]}"
                    )
                if do_reduce_labels:
                    label = _reduce_labels(label)
                if tiled:
                    plan = plans[index]
                    pad = ((0, plan.padded_height - label.shape[0]), (0, plan.padded_width - label.shape[1]))
                    padded = np.pad(label, pad, constant_values=255)  # padding is no tissue: ignored
                    for y, x in plan.corners:
                        labels.append(resize_labels(padded[y : y + tile, x : x + tile], in_h, in_w))
                elif do_resize:
                    labels.append(resize_labels(label, *window_input_size(size, *label.shape)))
                else:
                    labels.append(label)
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def stitch(self, maps: torch.Tensor, target_sizes) -> list:
        """Per-window maps -> one map per image, averaged over overlapping windows.

        Args:
            maps: (N, C, h, w) model outputs for the N windows this processor made of images of
                sizes ``target_sizes`` (in order).
            target_sizes: the (height, width) of every image given to the processor.

        Returns:
            a list of (C, height, width) float32 tensors.

        Raises:
            ValueError: the sizes' windows do not add up to N (one line, with both counts).
        """
        plans = [self.tile_plan(int(h), int(w)) for h, w in target_sizes]
        expected = sum(len(plan.corners) for plan in plans)
        if expected != len(maps):
            sizes = ", ".join(f"{int(h)}x{int(w)}" for h, w in target_sizes)
            raise ValueError(
                f"images of {sizes} pixels make {expected} windows of {self.tile_size} pixels, but the "
                f"outputs have {len(maps)}: pass the sizes of the images given to the processor as "
                "target_sizes (or set do_tile=False)"
            )
        _, _, input_size = self._window()
        stitched, start = [], 0
        for plan in plans:
            count = len(plan.corners)
            windows = window_logits(
                maps[start : start + count], input_size, input_size, (plan.tile, plan.tile)
            )
            stitched.append(stitch_windows(windows, plan))
            start += count
        return stitched

    def _per_image(self, maps: torch.Tensor, target_sizes) -> list:
        """(C, H, W) maps per image: stitched windows when tiling, else each row resized to its target size."""
        maps = maps.detach()
        if target_sizes is None:
            return [m.float() for m in maps]
        if self._tiles(self.do_resize, self.do_tile):
            return self.stitch(maps, target_sizes)
        if len(target_sizes) != len(maps):
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(maps)} logits")
        return [_resized(m, tuple(int(v) for v in target)) for m, target in zip(maps, target_sizes)]

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Turn model outputs into label maps.

        Args:
            outputs: model output with ``logits`` (N, num_labels, h, w).
            target_sizes: optional list of the (height, width) of every image given to the
                processor. With tiling (the default) the windows' logits are brought back to
                image pixels (bilinear) and averaged over overlaps; without tiling each row's
                logits are resized (bilinear) to its size. The arg-max follows.

        Returns:
            A list of int64 tensors (H, W) of label ids: one per image with ``target_sizes``, one
            per row of ``logits`` without.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        return [m.argmax(dim=0) for m in self._per_image(logits, target_sizes)]

    def post_process_instance_segmentation(
        self,
        outputs,
        target_sizes=None,
        min_size: int = 10,
        threshold: float | None = None,
        mask_threshold: float | None = None,
        overlap_mask_area_threshold: float | None = None,
        label_ids_to_fuse=None,
        **kwargs,
    ) -> list[dict]:
        """Turn model outputs into nuclei (instances), in the form of transformers' instance models.

        Models with a distance-map head (``outputs.hv_maps`` and ``outputs.nuclei_logits``) use
        :func:`hv_to_instances`; other models :func:`semantic_to_instances` (per-class components
        split by a distance-transform watershed). With ``target_sizes``, logits and maps are brought
        back to image pixels before the softmax (windows averaged over their overlaps, as in
        ``post_process_semantic_segmentation``), so ``min_size`` counts pixels of the image.

        Args:
            outputs: model output with ``logits`` (N, num_labels, h, w) and optionally
                ``nuclei_logits`` (N, 2, h, w) and ``hv_maps`` (N, 2, h, w).
            target_sizes: optional list of the (height, width) of every image given to the
                processor; default: one result per row of ``logits``, at its size.
            min_size: nuclei with fewer pixels are dropped (10 at 40x, 3 at 20x).
            threshold: nuclei whose score is below it are dropped (None keeps all). The
                ``image-segmentation`` pipeline passes 0.9 unless told otherwise.
            mask_threshold: nucleus-pixel probability threshold of the hv path (None: 0.5).
            overlap_mask_area_threshold, label_ids_to_fuse: accepted for the pipeline's sake and
                ignored: nuclei never overlap and are never fused.

        Returns:
            A list of dicts (one per image / row) ``{"segmentation": (H, W) int32 tensor of nucleus ids, 0 = no
            nucleus (background), "segments_info": [{"id", "label_id" (1..num_labels-1), "score",
            "was_fused": False}, ...]}``; ids run 1..K in raster order of each nucleus's first
            pixel. An image without nuclei gets an all-zero map and an empty list.
        """
        logits = _output_field(outputs, "logits")
        hv_maps = _output_field(outputs, "hv_maps")
        nuclei_logits = _output_field(outputs, "nuclei_logits")
        if logits is None:
            raise ValueError("outputs have no `logits`")
        if hv_maps is not None and nuclei_logits is None:
            raise ValueError("outputs have `hv_maps` but no `nuclei_logits`")
        nucleus_threshold = NUCLEUS_THRESHOLD if mask_threshold is None else float(mask_threshold)
        logits = self._per_image(logits, target_sizes)
        if hv_maps is not None:
            nuclei_logits = self._per_image(nuclei_logits, target_sizes)
            hv_maps = self._per_image(hv_maps, target_sizes)
        results = []
        for index in range(len(logits)):
            probabilities = logits[index].softmax(dim=0).numpy()
            if hv_maps is None:
                instances, segments = semantic_to_instances(probabilities, min_size=min_size)
            else:
                nuclei = nuclei_logits[index].softmax(dim=0)[1].numpy()
                hv = hv_maps[index].numpy()
                instances, segments = hv_to_instances(
                    probabilities, nuclei, hv, min_size=min_size, nucleus_threshold=nucleus_threshold
                )
            if threshold is not None:
                instances, segments = _keep_confident(instances, segments, float(threshold))
            results.append({"segmentation": torch.from_numpy(instances), "segments_info": segments})
        return results


def _as_float_statistics(kwargs: dict) -> dict:
    """``image_mean`` / ``image_std`` given as ints (e.g. ``[0, 0, 0]``) as floats, as transformers' typing wants."""
    for key in ("image_mean", "image_std"):
        value = kwargs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kwargs[key] = float(value)
        elif isinstance(value, (list, tuple)):
            kwargs[key] = type(value)(float(v) for v in value)
    return kwargs


def _keep_confident(instances: np.ndarray, segments: list[dict], threshold: float) -> tuple[np.ndarray, list]:
    """Drop nuclei scoring below ``threshold``; the others keep their order and are renumbered 1..K."""
    kept = [s for s in segments if s["score"] >= threshold]
    if len(kept) == len(segments):
        return instances, segments
    lut = np.zeros(len(segments) + 1, dtype=np.int32)
    for new, segment in enumerate(kept, start=1):
        lut[segment["id"]] = new
    renumbered = [dict(segment, id=new) for new, segment in enumerate(kept, start=1)]
    return lut[instances], renumbered


__all__ = [
    "DEFAULT_TILE_SIZE",
    "TilingPlan",
    "UNetFCNImageProcessor",
    "pad_image",
    "plan_tiles",
    "resize_image",
    "resize_labels",
    "stitch_windows",
    "tile_positions",
    "window_input_size",
    "window_logits",
    "hv_to_instances",
    "semantic_to_instances",
    "to_label_array",
    "to_rgb_array",
]
