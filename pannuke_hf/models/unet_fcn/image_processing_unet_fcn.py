"""Image processor of the UNet-FCN model: any image -> RGB -> resize -> normalise; label maps -> int64.

This file is copied next to saved checkpoints (``trust_remote_code``), so it imports nothing from
``pannuke_hf``. Its default mean / std are the ImageNet statistics of transformers on the 0-255
scale, which are the reference model's; ``pannuke_hf`` sets them from ``pannuke_hf.constants`` on
import, and saved ``preprocessor_config.json`` files always carry them.
"""

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
    """Keyword arguments of [`UNetFCNImageProcessor`] beyond transformers' ``ImagesKwargs``."""


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


def _resize(array: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    """Resize each channel of (C, H, W) float32 or a (H, W) int64 map with PIL (half-pixel centres)."""
    if array.shape[-2:] == (height, width):
        return array
    if array.ndim == 2:
        # Labels: PIL "I" (int32) keeps values such as 255 exactly; NEAREST never mixes labels.
        image = PIL.Image.fromarray(array.astype(np.int32), mode="I")
        return np.asarray(image.resize((width, height), resample=resample)).astype(np.int64)
    channels = [
        np.asarray(PIL.Image.fromarray(channel, mode="F").resize((width, height), resample=resample))
        for channel in array
    ]
    return np.stack(channels).astype(np.float32)


class UNetFCNImageProcessor(PilBackend):
    r"""Prepares images (and label maps) for [`UNetFCNForSemanticSegmentation`].

    Steps: convert to RGB on the 0-255 scale (RGBA / LA composited on white, grayscale repeated,
    16-bit divided by 257, floats in 0-1 multiplied by 255), resize (default 512x512, bilinear;
    label maps nearest), normalise with ``image_mean`` / ``image_std`` (0-255 scale).
    ``segmentation_maps`` become ``labels`` (int64, 255 kept as the ignore value).

    Returns a ``BatchFeature`` with ``pixel_values`` (B, 3, H, W) float32 and, when maps are given,
    ``labels`` (B, H, W) int64.
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
    # Reference statistics on the 0-255 scale (= transformers' ImageNet values x 255).
    image_mean = tuple(round(255.0 * m, 6) for m in IMAGENET_DEFAULT_MEAN)
    image_std = tuple(round(255.0 * s, 6) for s in IMAGENET_DEFAULT_STD)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def preprocess(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        """Process images and optional label maps.

        Args:
            images: one image or a batch (list, or an array / tensor with a leading batch axis) of
                PIL images, numpy arrays or torch tensors of any of the forms of ``to_rgb_array``.
            segmentation_maps: optional label map(s) (H, W), same count and sizes as the images.
            **kwargs: overrides of the processor's attributes (``size``, ``do_resize``,
                ``image_mean``, ``return_tensors``, ...).

        Returns:
            ``BatchFeature`` with ``pixel_values`` and, when maps are given, ``labels``.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

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
        **kwargs,
    ) -> BatchFeature:
        resample = PILImageResampling.BILINEAR if resample is None else resample
        pixel_values, original_sizes = [], []
        for index, image in enumerate(_flatten(images, "images", item_ndims=3)):
            array = to_rgb_array(image, index, input_data_format)
            original_sizes.append(array.shape[-2:])
            if do_resize:
                array = _resize(array, size.height, size.width, resample)
            if do_rescale:
                array = array * rescale_factor
            if do_normalize:
                mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1)
                std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1)
                array = (array - mean) / std
            pixel_values.append(array.astype(np.float32))
        data = {"pixel_values": pixel_values}

        if segmentation_maps is not None:
            maps = _flatten(segmentation_maps, "segmentation_maps", item_ndims=2)
            if len(maps) != len(pixel_values):
                raise ValueError(f"got {len(pixel_values)} images but {len(maps)} segmentation maps")
            labels = []
            for index, segmentation_map in enumerate(maps):
                label = to_label_array(segmentation_map, index)
                if label.shape != original_sizes[index]:
                    raise ValueError(
                        f"segmentation map {index} has size {label.shape}, its image {original_sizes[index]}"
                    )
                if do_resize:
                    label = _resize(label, size.height, size.width, PILImageResampling.NEAREST)
                labels.append(label)
            data["labels"] = labels
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None) -> list[torch.Tensor]:
        """Turn model outputs into label maps.

        Args:
            outputs: model output with ``logits`` (B, num_labels, h, w).
            target_sizes: optional list of B ``(height, width)``; logits are resized (bilinear) to
                each before the argmax.

        Returns:
            A list of B int64 tensors (H, W) of label ids.
        """
        logits = outputs.logits if hasattr(outputs, "logits") else outputs["logits"]
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if len(target_sizes) != len(logits):
            raise ValueError(f"got {len(target_sizes)} target sizes for a batch of {len(logits)} logits")
        maps = []
        for logit, target in zip(logits, target_sizes):
            height, width = (int(v) for v in target)
            resized = F.interpolate(
                logit[None].float(), size=(height, width), mode="bilinear", align_corners=False
            )
            maps.append(resized[0].argmax(dim=0))
        return maps


__all__ = ["UNetFCNImageProcessor", "to_label_array", "to_rgb_array"]
