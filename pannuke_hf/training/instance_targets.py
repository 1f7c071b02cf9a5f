"""Targets of the distance-map ("hv") instance head, computed from an instance map.

Policy (stated once; the code below is the policy):

* **Nucleus map**: 1 on every pixel of a nucleus (instance id > 0), 0 elsewhere; pixels whose
  semantic label is the ignore value (255) are ignored (255) here too.
* **Centre**: the centroid of the nucleus's pixels (mean row and mean column, not rounded), so a
  symmetric nucleus has offsets symmetric about 0 whatever its size parity. A nucleus in several
  pieces (one id, disconnected) has one centroid.
* **Distance maps** (HoVer-Net style), each nucleus pixel's offset from its centre, normalised
  per nucleus and per side: horizontal ``h = (x - cx) / max(x - cx)`` right of the centre and
  ``(x - cx) / max(cx - x)`` left of it (so the leftmost column is -1 and the rightmost +1);
  vertical ``v`` the same along y (+1 at the bottom row, image rows growing downwards). A side
  with no offset (a one-pixel-wide nucleus) stays 0. Background is 0. Channel 0 is ``h``,
  channel 1 ``v``: the order of the model's ``hv_maps``.
* The targets are computed from the instance map **after** the geometric augmentation and the
  resize (:class:`InstanceTargetTransform` wraps the training transform), so they always match
  the image: a flipped image's horizontal map is recomputed from the flipped instance map, which
  is the mirror of the unflipped map with its sign changed.

Everything is vectorised over the nucleus pixels (``numpy.bincount`` for the centroids,
``scipy.ndimage.maximum`` / ``minimum`` per label for the per-side scales); no loop runs over
pixels or nuclei.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..constants import IGNORE_INDEX


def _normalised_offsets(coordinate: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Offsets of nucleus pixels from their nucleus's mean coordinate, each side scaled to [-1, 1].

    Args:
        coordinate: (P,) x or y of the P nucleus pixels.
        labels: (P,) their nucleus, 1..count.
        count: number of nuclei.
    """
    from scipy import ndimage

    sizes = np.bincount(labels, minlength=count + 1)
    centre = np.bincount(labels, weights=coordinate, minlength=count + 1) / np.maximum(sizes, 1)
    offset = coordinate - centre[labels]
    index = np.arange(1, count + 1)
    high = np.zeros(count + 1)
    low = np.zeros(count + 1)
    high[1:] = ndimage.maximum(offset, labels, index)
    low[1:] = -np.asarray(ndimage.minimum(offset, labels, index))
    scale = np.where(offset > 0, high[labels], low[labels])
    out = np.divide(offset, scale, out=np.zeros_like(offset), where=scale > 1e-9)
    return np.clip(out, -1.0, 1.0)


def hv_targets(instance_map: np.ndarray) -> np.ndarray:
    """Horizontal and vertical distance maps of an instance map (see the module docstring).

    Args:
        instance_map: (H, W) integer nucleus ids, 0 = no nucleus (any ids, not necessarily 1..K).

    Returns:
        (2, H, W) float32: channel 0 the normalised x offset, channel 1 the normalised y offset of
        each nucleus pixel from its nucleus's centroid, in [-1, 1]; 0 on background.

    Raises:
        ValueError: not a 2-D integer map, or negative ids.
    """
    instance_map = np.asarray(instance_map)
    if instance_map.ndim != 2 or not np.issubdtype(instance_map.dtype, np.integer):
        raise ValueError(
            f"instance map: expected an (H, W) integer array, got {instance_map.dtype} {instance_map.shape}"
        )
    if instance_map.size and instance_map.min() < 0:
        raise ValueError(f"instance map: ids must be >= 0, got {instance_map.min()}")
    height, width = instance_map.shape
    out = np.zeros((2, height, width), dtype=np.float32)
    # Only nucleus pixels are touched (a tenth of a typical patch); ids are compacted to 1..K
    # through a lookup table, without sorting the image.
    pixels = np.flatnonzero(instance_map)
    if pixels.size == 0:
        return out
    ids = instance_map.ravel()[pixels].astype(np.int64)
    present = np.flatnonzero(np.bincount(ids))
    lookup = np.zeros(int(present[-1]) + 1, dtype=np.int64)
    lookup[present] = np.arange(1, len(present) + 1)
    labels = lookup[ids]
    rows, cols = np.divmod(pixels, width)
    out[0].ravel()[pixels] = _normalised_offsets(cols.astype(np.float64), labels, len(present))
    out[1].ravel()[pixels] = _normalised_offsets(rows.astype(np.float64), labels, len(present))
    return out


def nuclei_targets(
    instance_map: np.ndarray, labels: np.ndarray | None = None, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Nucleus-pixel targets: 1 where ``instance_map > 0``, else 0; ``ignore_index`` where ``labels`` is.

    Args:
        instance_map: (H, W) nucleus ids.
        labels: optional (H, W) semantic labels of the same size.
        ignore_index: the ignored label value.

    Returns:
        (H, W) int64.
    """
    instance_map = np.asarray(instance_map)
    target = (instance_map > 0).astype(np.int64)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != instance_map.shape:
            raise ValueError(f"labels {labels.shape} and instance map {instance_map.shape} differ in size")
        target[labels == ignore_index] = ignore_index
    return target


class InstanceTargetTransform:
    """Wraps a :class:`~pannuke_hf.training.augment.SegmentationTransform` built with
    ``keep_instances=True``: each example's transformed ``instance_mask`` becomes the targets of
    the ``"hv"`` head.

    Every example ``{"pixel_values", "labels", "instance_mask"}`` the wrapped transform returns
    becomes ``{"pixel_values", "labels", "nuclei_targets" (h, w) int64, "hv_targets" (2, h, w)
    float32}``: the names of the model's ``forward`` arguments.

    Args:
        transform: the training transform (``keep_instances=True``).
        ignore_index: label value of ignored pixels.
    """

    def __init__(self, transform: Any, ignore_index: int = IGNORE_INDEX) -> None:
        if not getattr(transform, "keep_instances", False):
            raise ValueError("InstanceTargetTransform needs a transform built with keep_instances=True")
        self.transform = transform
        self.ignore_index = ignore_index

    @property
    def columns(self) -> list[str]:
        """The dataset columns the wrapped transform reads."""
        return self.transform.columns

    def _targets(self, out: dict[str, list[Any]]) -> dict[str, list[Any]]:
        import torch

        instances = out.pop("instance_mask")
        labels = out.get("labels", [None] * len(instances))
        out["nuclei_targets"], out["hv_targets"] = [], []
        for instance, label in zip(instances, labels):
            instance = instance.numpy() if hasattr(instance, "numpy") else np.asarray(instance)
            label = None if label is None else np.asarray(label)
            out["nuclei_targets"].append(torch.from_numpy(nuclei_targets(instance, label, self.ignore_index)))
            out["hv_targets"].append(torch.from_numpy(hv_targets(instance)))
        return out

    def transform_batch(
        self, batch: dict[str, list[Any]], keys: Sequence[tuple[int, int]] | None = None
    ) -> dict[str, list[Any]]:
        """The wrapped ``transform_batch``, then the targets."""
        return self._targets(self.transform.transform_batch(batch, keys))

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """``Dataset.set_transform`` entry point."""
        return self._targets(self.transform(batch))


__all__ = ["InstanceTargetTransform", "hv_targets", "nuclei_targets"]
