"""Sliding-window prediction of label maps for images of any size.

A segmentation model sees a fixed window: the patches it was trained on (PanNuke: 256x256
pixels at 40x, which the image processor may resize, e.g. to 512x512). Larger images are cut
into overlapping tiles of that size, every tile goes through the model, and the **raw logits**
(not softmax probabilities, as in the reference's "slide" mode: crop size + stride) of
overlapping tiles are averaged per pixel before the arg-max. Images smaller than a tile are
padded by reflection to the tile size and the result is cropped back; model inputs whose sides
are not multiples of the model's total stride are padded the same way.

Geometry (all sizes in pixels of the input image):

* ``tile_size`` (default: the processor's ``tile_size``, else ``constants.PATCH_SIZE`` = 256):
  the window of the image one model input covers.
* ``scale`` (default: the processor's ``size`` / ``tile_size`` when it resizes, else 1): the
  factor from image pixels to model-input pixels, so tiles reach the model at the magnification
  it was trained at, whatever ``tile_size`` is.
* ``overlap`` (default: the processor's ``tile_overlap``, else a third of the tile, like the
  reference's 256 / 170 crop / stride): the tile stride is ``tile_size - overlap``, rounded down
  to the model's pooling grid; the last tile of a row/column is aligned with the image edge, so
  every pixel is covered.

The geometry, the resize and the stitching are the functions of the image processor's file
(``UNetFCNImageProcessor`` tiles the same way), so ``predict_image``, the processor with
``post_process_semantic_segmentation(..., target_sizes)`` and the ``image-segmentation``
pipeline give the same label maps and nuclei. Pre-processing follows the processor's standard
attributes (``do_rescale``/``rescale_factor``, ``do_normalize``/``image_mean``/``image_std``);
tiles are resized with the package's one resize rule, OpenCV ``INTER_LINEAR`` on the 8-bit
image (the training transform's, as the reference's ``mmcv.imresize``: no antialiasing), and
the logits are resized back bilinearly to the tile's pixels.

Inputs may be PIL images of any mode or numpy arrays: grey, RGB, RGBA (composited over white),
16-bit (scaled from 0-65535). See :func:`pannuke_hf.images.to_rgb_uint8`.

Nuclei (:func:`predict_instances`): the same tiling, with a distance-map model's nucleus logits
and horizontal / vertical maps averaged over overlaps like the class logits; the instance
post-processing then runs **once on the stitched full-image maps**, so a nucleus cut by a tile
border is one nucleus. Memory: the stitched maps are float32, (num_labels + 1) channels (+ 4 for
a distance-map head) at full resolution, about twice that at the peak of the post-processing:
an 8k x 8k image with 6 labels and the hv head needs ~6 GB; split larger images (or use
``offset`` in :mod:`pannuke_hf.exports` for crops).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .constants import PATCH_SIZE
from .images import to_rgb_uint8
from .models.unet_fcn.image_processing_unet_fcn import (
    TilingPlan,
    pad_image,
    plan_tiles,
    resize_image,
    stride_align,
    tile_positions,
    window_input_size,
    window_logits,
)

__all__ = [
    "TilingPlan",
    "default_scale",
    "processor_tile_size",
    "plan_tiles",
    "predict_image",
    "predict_images",
    "predict_keyed",
    "InstancePrediction",
    "predict_instances",
    "predict_instances_keyed",
    "predict_logits",
    "tile_positions",
]


# ---------------------------------------------------------------------------------------------
# Model and processor settings (the geometry, ``tile_positions`` / ``plan_tiles`` /
# ``TilingPlan``, lives in the image processor's file and is re-exported here)
# ---------------------------------------------------------------------------------------------


def processor_tile_size(processor: Any) -> int:
    """Side in image pixels of the patches the processor's model was trained on (``PATCH_SIZE`` if unknown)."""
    return int(getattr(processor, "tile_size", None) or PATCH_SIZE)


def default_scale(processor: Any) -> tuple[float, float]:
    """Image-pixel -> model-pixel factor implied by a processor: model input of a window / window.

    For ``UNetFCNImageProcessor`` (and any processor with ``size``): ``size`` / ``tile_size``
    (default ``PATCH_SIZE``), e.g. 512 / 256 = 2. 1.0 when the processor does not resize (or is
    None, or its ``size`` is of no known form).
    """
    if processor is None or not getattr(processor, "do_resize", False):
        return 1.0, 1.0
    tile = processor_tile_size(processor)
    try:
        height, width = window_input_size(getattr(processor, "size", None), tile, tile)
    except ValueError:
        return 1.0, 1.0
    return height / tile, width / tile


def _normalisation(
    processor: Any, device: torch.device
) -> tuple[float, torch.Tensor | None, torch.Tensor | None]:
    """(rescale factor, mean (1,3,1,1), std (1,3,1,1)) from the processor's standard attributes."""
    if processor is None:
        return 1.0 / 255.0, None, None
    factor = (
        float(getattr(processor, "rescale_factor", 1 / 255))
        if getattr(processor, "do_rescale", False)
        else 1.0
    )
    if not getattr(processor, "do_normalize", False):
        return factor, None, None
    mean = torch.as_tensor(np.asarray(processor.image_mean, dtype=np.float32), device=device).view(
        1, -1, 1, 1
    )
    std = torch.as_tensor(np.asarray(processor.image_std, dtype=np.float32), device=device).view(1, -1, 1, 1)
    return factor, mean, std


def window_align(model_stride: int, processor: Any, scale: tuple[float, float]) -> int:
    """Window starts are multiples of this (image pixels): the pooling grid of the model and the processor.

    The stride of the windows is rounded to it when it is whole, so that the model's and the
    processor's grid (UNetFCNImageProcessor plans its windows on its own) cut an image the same
    way; ``pannuke_hf.slides`` plans a slide's windows with it too.
    """
    grid = math.lcm(model_stride, int(getattr(processor, "output_stride", 1) or 1))
    return stride_align(grid, scale[0]) if scale[0] == scale[1] else 1


def _model_stride(model: torch.nn.Module) -> int:
    """Total downsampling of the model (input sides must be multiples of it); 1 if unknown."""
    config = getattr(model, "config", None)
    return int(getattr(config, "output_stride", 1) or 1)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype if p.dtype.is_floating_point else torch.float32
    return torch.device("cpu"), torch.float32


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """An image in flight: its tiles, the logit sum and the coverage count."""

    key: Any
    image: np.ndarray  # padded (PH, PW, 3) uint8
    plan: TilingPlan
    logits: torch.Tensor | None = None  # (C, PH, PW) float32
    count: torch.Tensor | None = None  # (PH, PW) float32
    pending: int = 0


class _TileRunner:
    """Runs batches of equal-sized tiles through the model and returns logits at tile resolution."""

    def __init__(
        self, model: torch.nn.Module, processor: Any, scale: tuple[float, float], all_maps: bool = False
    ):
        self.model = model
        # all_maps: also return a distance-map head's nuclei_logits and hv_maps, concatenated
        # after the class logits; ``num_labels`` / ``has_hv`` describe the channels once known
        self.all_maps = all_maps
        self.num_labels: int | None = None
        self.has_hv = False
        self.device, self.dtype = _model_device_dtype(model)
        self.factor, self.mean, self.std = _normalisation(processor, self.device)
        self.scale = scale
        self.stride = _model_stride(model)

    def __call__(self, tiles: np.ndarray) -> torch.Tensor:
        """``tiles`` (B, T, T, 3) uint8 -> logits (B, C, T, T) float32 on CPU."""
        t_h, t_w = tiles.shape[1:3]
        in_h = max(1, round(t_h * self.scale[0]))
        in_w = max(1, round(t_w * self.scale[1]))
        if (in_h, in_w) != (t_h, t_w):
            # the one resize rule (OpenCV INTER_LINEAR on 8 bits), as training and the processor
            tiles = np.stack([resize_image(tile, in_h, in_w) for tile in tiles])
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":  # page-locked host memory: the copy overlaps the GPU's work
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        # NHWC -> NCHW view: channels-last strides, the layout a channels-last model runs fastest in
        x = x.permute(0, 3, 1, 2).float()
        x = x * self.factor
        if self.mean is not None:
            x = (x - self.mean) / self.std
        # pad to the model's stride (reflection keeps tissue-like context at the border)
        pad_h = (-in_h) % self.stride
        pad_w = (-in_w) % self.stride
        if pad_h or pad_w:
            mode = "reflect" if pad_h < in_h and pad_w < in_w else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        out = self.model(x.to(self.dtype))  # first positional argument: pixel_values
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, tuple | list) else out)
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"the model returned logits of shape {tuple(logits.shape)}, expected (B, C, H, W)"
            )
        self.num_labels = int(logits.shape[1])
        hv_maps = getattr(out, "hv_maps", None)
        nuclei_logits = getattr(out, "nuclei_logits", None)
        self.has_hv = hv_maps is not None and nuclei_logits is not None
        if self.all_maps and self.has_hv:
            extra = torch.cat([nuclei_logits, hv_maps], dim=1).to(logits.dtype)
            if extra.shape[-2:] != logits.shape[-2:]:
                extra = F.interpolate(
                    extra.float(), size=logits.shape[-2:], mode="bilinear", align_corners=False
                )
            logits = torch.cat([logits, extra.to(logits.dtype)], dim=1)
        # back to the window's image pixels, as UNetFCNImageProcessor.stitch does
        return window_logits(logits, tuple(x.shape[-2:]), (in_h, in_w), (t_h, t_w)).cpu()


#: The reflect padding of images smaller than a window (kept under its old name).
_pad_to = pad_image


def _resolve(processor: Any, tile_size: int | None, overlap: int | None, scale: float | None):
    """(tile, overlap, (scale_y, scale_x)): the arguments, else the processor's settings, else the defaults."""
    tile = int(tile_size) if tile_size is not None else processor_tile_size(processor)
    if tile < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile}")
    processor_overlap = (
        getattr(processor, "tile_overlap", None) if tile == processor_tile_size(processor) else None
    )
    ov = (
        int(overlap)
        if overlap is not None
        else (int(processor_overlap) if processor_overlap is not None else round(tile / 3))
    )
    sc = default_scale(processor) if scale is None else (float(scale), float(scale))
    if sc[0] <= 0 or sc[1] <= 0:
        raise ValueError(f"scale must be > 0, got {sc}")
    return tile, ov, sc


def predict_images(
    model: torch.nn.Module,
    processor: Any,
    images: Iterable[Any],
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    scale: float | None = None,
    return_logits: bool = False,
) -> Iterator[Any]:
    """Predict many images, batching tiles across images; yields results in input order.

    Args:
        model: a segmentation model: ``model(pixel_values)`` with pixel_values ``(B, 3, h, w)`` returning an output with
            ``.logits`` (B, C, h', w') (or the tensor itself). Put it in eval mode and on its
            device before calling (this function does neither, so dropout/BN behave as you set).
        processor: an image processor (``UNetFCNImageProcessor`` or any with the standard
            ``do_rescale``/``do_normalize``/``image_mean``/``image_std``/``do_resize``/``size``
            attributes) or None (values scaled to 0-1 only).
        images: PIL images or numpy arrays (any size, grey/RGB/RGBA/16-bit).
        tile_size: window side in image pixels (default ``PATCH_SIZE``).
        overlap: pixels shared by neighbouring windows (default ``round(tile_size / 3)``).
        batch_size: tiles per forward pass.
        scale: image -> model pixel factor (default from the processor, see the module doc).
        return_logits: yield the averaged logits ``(C, H, W)`` float32 instead of labels.

    Yields:
        per image, the label map ``(H, W)`` uint8 (arg-max of the averaged logits), or the logits.
    """
    for _, result in predict_keyed(
        model,
        processor,
        enumerate(images),
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        scale=scale,
        return_logits=return_logits,
    ):
        yield result


def predict_keyed(
    model: torch.nn.Module,
    processor: Any,
    items: Iterable[tuple[Any, Any]],
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    scale: float | None = None,
    return_logits: bool = False,
    progress: Callable[[int, int], Any] | None = None,
    _runner: _TileRunner | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Same as :func:`predict_images` for ``(key, image)`` pairs; yields ``(key, result)`` in order.

    The input iterable is consumed lazily (only the images of the current batch are held), so a
    generator that loads files one by one keeps memory flat. ``progress(done, total)``, when
    given, is called after every forward pass with the tiles predicted so far and the tiles
    planned so far (images are planned as they are read).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tile, ov, sc = _resolve(processor, tile_size, overlap, scale)
    runner = _TileRunner(model, processor, sc) if _runner is None else _runner
    runner.scale = sc
    tiles_done = tiles_planned = 0
    align_px = window_align(runner.stride, processor, sc)

    jobs: list[_Job] = []  # images whose tiles are not all predicted yet, in input order
    queue: list[tuple[_Job, int, int]] = []  # tiles waiting for a batch

    def run_batch(batch: list[tuple[_Job, int, int]]) -> None:
        tiles = np.stack([job.image[y : y + tile, x : x + tile] for job, y, x in batch])
        with torch.inference_mode():
            logits = runner(tiles)
        for (job, y, x), lg in zip(batch, logits):
            if job.logits is None:
                job.logits = torch.zeros((lg.shape[0], job.plan.padded_height, job.plan.padded_width))
                job.count = torch.zeros((job.plan.padded_height, job.plan.padded_width))
            job.logits[:, y : y + tile, x : x + tile] += lg
            job.count[y : y + tile, x : x + tile] += 1
            job.pending -= 1
        nonlocal tiles_done
        tiles_done += len(batch)
        if progress is not None:
            progress(tiles_done, tiles_planned)

    def finished() -> Iterator[tuple[Any, Any]]:
        while jobs and jobs[0].pending == 0:
            job = jobs.pop(0)
            avg = (job.logits / job.count)[:, : job.plan.height, : job.plan.width]
            if return_logits:
                yield job.key, avg.numpy()
            else:
                yield job.key, avg.argmax(0).to(torch.uint8).numpy()

    for key, image in items:
        rgb = to_rgb_uint8(image, name=str(key))
        h, w = rgb.shape[:2]
        plan = plan_tiles(h, w, tile, ov, align=align_px)
        job = _Job(key, _pad_to(rgb, plan.padded_height, plan.padded_width), plan, pending=len(plan.corners))
        jobs.append(job)
        tiles_planned += len(plan.corners)
        for y, x in plan.corners:
            queue.append((job, y, x))
            if len(queue) == batch_size:
                run_batch(queue)
                queue = []
        yield from finished()
    if queue:
        run_batch(queue)
    yield from finished()


def predict_logits(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    scale: float | None = None,
) -> np.ndarray:
    """Averaged logits of one image: ``(C, H, W)`` float32 (see :func:`predict_images`)."""
    return next(
        predict_images(model, processor, [image], tile_size, overlap, batch_size, scale, return_logits=True)
    )


def predict_image(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    scale: float | None = None,
) -> np.ndarray:
    """Label map of one image of any size: ``(H, W)`` uint8 label values.

    Args:
        model, processor: see :func:`predict_images` (model in eval mode, on its device).
        image: PIL image or numpy array ``(H, W[, C])``; grey, RGB, RGBA or 16-bit.
        tile_size, overlap, batch_size, scale: tiling, see the module docstring.

    Returns:
        ``(H, W)`` uint8, the arg-max over classes of the logits averaged over overlapping tiles.
    """
    return next(predict_images(model, processor, [image], tile_size, overlap, batch_size, scale))


def predict_instances(
    model: torch.nn.Module,
    processor: Any,
    image: Any,
    tile_size: int | None = None,
    overlap: int | None = None,
    scale: float | None = None,
    min_size: int = 10,
    progress: Callable[[int, int], Any] | None = None,
    batch_size: int = 8,
) -> tuple[np.ndarray, list[dict]]:
    """Nuclei of one image of any size: tiled prediction, stitched maps, one post-processing.

    The class logits (and, for a model with a distance-map head, its nucleus logits and
    horizontal / vertical maps) are predicted tile by tile and averaged over overlaps exactly as in
    :func:`predict_images`; the processor's ``post_process_instance_segmentation`` then runs once
    on the full-image maps, so a nucleus cut by a tile border is found as one nucleus.

    Args:
        model, processor: see :func:`predict_images` (model in eval mode, on its device). A
            processor without ``post_process_instance_segmentation`` (or None) falls back to the
            UNet-FCN functions.
        image: PIL image or numpy array ``(H, W[, C])``.
        tile_size, overlap, scale, batch_size: tiling, see the module docstring.
        min_size: nuclei with fewer pixels (of the image) are dropped.
        progress: optional ``progress(tiles_done, tiles_total)`` called after every forward pass.

    Returns:
        ``(instance_map, segments_info)``: (H, W) int32 nucleus ids (0 = no nucleus, 1..K in
        raster order of each nucleus's first pixel) and ``[{"id", "label_id", "score",
        "was_fused": False}, ...]``. Memory: see the module docstring.
    """
    _, result = next(
        predict_instances_keyed(
            model,
            processor,
            [(0, image)],
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            scale=scale,
            min_size=min_size,
            progress=progress,
        )
    )
    return result.instances, result.segments_info


@dataclass
class InstancePrediction:
    """Nuclei of one image (see :func:`predict_instances_keyed`).

    Attributes:
        instances: (H, W) int32 nucleus ids, 0 = no nucleus.
        segments_info: ``[{"id", "label_id", "score", "was_fused": False}, ...]``.
        labels: (H, W) uint8 arg-max of the stitched class logits (the semantic prediction).
    """

    instances: np.ndarray
    segments_info: list[dict]
    labels: np.ndarray


def predict_instances_keyed(
    model: torch.nn.Module,
    processor: Any,
    items: Iterable[tuple[Any, Any]],
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    scale: float | None = None,
    min_size: int = 10,
    progress: Callable[[int, int], Any] | None = None,
) -> Iterator[tuple[Any, InstancePrediction]]:
    """:func:`predict_instances` for many ``(key, image)`` pairs, batching tiles across images.

    Yields ``(key, InstancePrediction)`` in input order; the input is consumed lazily as in
    :func:`predict_keyed`.
    """
    from types import SimpleNamespace

    tile, ov, sc = _resolve(processor, tile_size, overlap, scale)
    runner = _TileRunner(model, processor, sc, all_maps=True)
    post_process = getattr(processor, "post_process_instance_segmentation", None)
    if post_process is None:
        from .models.unet_fcn.image_processing_unet_fcn import UNetFCNImageProcessor

        post_process = UNetFCNImageProcessor().post_process_instance_segmentation
    stitched = predict_keyed(
        model,
        processor,
        items,
        tile_size=tile,
        overlap=ov,
        batch_size=batch_size,
        scale=scale,
        return_logits=True,
        progress=progress,
        _runner=runner,
    )
    for key, maps in stitched:
        maps = torch.from_numpy(maps)
        num_labels = runner.num_labels
        outputs = SimpleNamespace(logits=maps[None, :num_labels], nuclei_logits=None, hv_maps=None)
        if runner.has_hv:
            outputs.nuclei_logits = maps[None, num_labels : num_labels + 2]
            outputs.hv_maps = maps[None, num_labels + 2 : num_labels + 4]
        labels = maps[:num_labels].argmax(0).to(torch.uint8).numpy()
        del maps
        result = post_process(outputs, min_size=min_size)[0]
        instances = result["segmentation"].numpy().astype(np.int32, copy=False)
        yield key, InstancePrediction(instances, result["segments_info"], labels)
