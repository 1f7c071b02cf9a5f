"""Nuclei as instances: conversions between the release format and instance maps (pure numpy).

Two forms of "nuclei with a class" travel through the package:

* the **release form**, an (H, W, 6) (or (H, W, 5)) array: channels 0-4 hold the instance ids of
  the neoplastic, inflammatory, connective, dead and epithelial nuclei (0 = none of this class),
  channel 5 (optional) is 1 on background. PanNuke's ``masks.npy``, HoVer-Net and CellViT
  predictions use it;
* the **instance form**, an (H, W) instance map (0 = no nucleus, k = nucleus k) plus the class
  (semantic label 1..5) of each nucleus: the dataset's ``instance_mask`` + ``instance_labels``.

The policy (the same as the dataset's, :mod:`pannuke_hf.data.raw`):

* every (class channel, raw id) pair is one nucleus, numbered 1..K in the order (channel, raw id);
  ids need not be contiguous, may be larger than 255 and may be split into several pieces;
* where several channels claim a pixel, the later channel wins; a nucleus whose every pixel was
  overwritten keeps its number (and its class) but has no pixel in the map;
* ids may be stored as integers or floats, but must be whole, finite and non-negative: anything
  else raises :class:`NucleiInputError` naming the image (``where``) and the channel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .constants import NUM_NUCLEUS_CHANNELS, RAW_CHANNEL_TO_LABEL

#: Semantic label (1..5) of nucleus-class channel j (0..4) of the release form.
CHANNEL_LABELS: tuple[int, ...] = tuple(RAW_CHANNEL_TO_LABEL[:NUM_NUCLEUS_CHANNELS])
#: Number of nucleus classes (labels 1..5).
NUM_NUCLEUS_CLASSES: int = NUM_NUCLEUS_CHANNELS

__all__ = [
    "CHANNEL_LABELS",
    "NUM_NUCLEUS_CLASSES",
    "NucleiInputError",
    "classes_from_semantic",
    "instance_ids",
    "instances_to_release",
    "normalise_classes",
    "release_ids",
    "release_nucleus_pixels",
    "release_to_instances",
    "release_values",
    "sparse_instances",
    "sparse_release",
]


class NucleiInputError(ValueError):
    """An instance map, class mapping or release-format array that cannot be read exactly.

    The message names the image (``where``, e.g. ``"image 12"``) and what was expected.
    """


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def instance_ids(array: Any, where: str | None = None, what: str = "instance ids") -> np.ndarray:
    """Validate an array of instance ids and return it as int64 (same shape).

    Args:
        array: integer, float or bool array of ids (0 = no nucleus).
        where: the image, for error messages (``"image 3"``, ``"'pred.npy': patch 3"``).
        what: what the array is, for error messages.

    Returns:
        The ids as a C-contiguous int64 array.

    Raises:
        NucleiInputError: non-numeric dtype, NaN, infinite, fractional or negative ids, or ids
            beyond int64.
    """
    return np.ascontiguousarray(_check_values(np.asarray(array), where, what))


def _check_values(values: np.ndarray, where: str | None, what: str) -> np.ndarray:
    """Validate ids (any numeric dtype) and return them as int64."""
    if values.dtype.kind == "b":
        return values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise NucleiInputError(f"{_prefix(where)}{what} must be numbers, got dtype {values.dtype}")
    if values.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            out = values.astype(np.int64, order="C")
            exact = out == values  # false for NaN, infinite, fractional and out-of-range values
        if not exact.all():
            bad_values = values[~exact]
            if np.isnan(bad_values).any():
                bad = "NaN"
            elif np.isinf(bad_values).any():
                bad = "infinite values"
            elif (np.abs(bad_values) >= 2.0**63).any():
                bad = "ids beyond int64"
            else:
                bad = f"fractional values such as {float(bad_values[0])!r} (ids must be whole numbers)"
            raise NucleiInputError(f"{_prefix(where)}{what} must be whole non-negative numbers, found {bad}")
    else:
        if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
            raise NucleiInputError(f"{_prefix(where)}{what}: found ids beyond int64")
        out = values.astype(np.int64, order="C")
    if out.size and out.min() < 0:
        raise NucleiInputError(
            f"{_prefix(where)}{what} must be whole non-negative numbers, found negative ids ({int(out.min())})"
        )
    return out


def release_nucleus_pixels(release: Any, where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shape-check a release-format array and find its nucleus pixels (no id validation yet).

    Returns:
        ``(flat, nucleus)``: the array as (H * W, C) and a (H * W,) bool mask of the pixels where
        some class channel is non-zero. NaN, negative and fractional values are non-zero, so
        :func:`release_values` on these pixels (or any superset) validates every id.

    Raises:
        NucleiInputError: wrong shape or dtype.
    """
    arr = np.asarray(release)
    if arr.ndim != 3 or arr.shape[2] not in (NUM_NUCLEUS_CHANNELS, NUM_NUCLEUS_CHANNELS + 1):
        raise NucleiInputError(
            f"{_prefix(where)}a release-format array must have shape (H, W, 5) or (H, W, 6), "
            f"got {tuple(arr.shape)}"
        )
    if arr.dtype.kind not in "iufb":
        raise NucleiInputError(f"{_prefix(where)}instance ids must be numbers, got dtype {arr.dtype}")
    flat = arr.reshape(-1, arr.shape[2])
    # One contiguous comparison, then the class columns OR-ed one by one (much faster than
    # .any(axis=1) over 5-wide rows).
    nonzero = (arr != 0).reshape(flat.shape) if arr.flags.c_contiguous else flat != 0
    nucleus = nonzero[:, 0].copy()
    for c in range(1, NUM_NUCLEUS_CHANNELS):
        nucleus |= nonzero[:, c]
    return flat, nucleus


def release_values(flat: np.ndarray, pixels: np.ndarray, where: str | None = None) -> np.ndarray:
    """Validated ids of the 5 class channels at ``pixels`` of a (H * W, C) release array.

    Returns:
        (5, n) int64, channel-major (row c: channel c's ids at the pixels).

    Raises:
        NucleiInputError: NaN / infinite / fractional / negative ids (the first bad channel named).
    """
    # np.take gathers whole rows several times faster than fancy indexing of a 2-D view.
    values = np.take(flat, pixels, axis=0)[:, :NUM_NUCLEUS_CHANNELS].T
    try:
        return np.ascontiguousarray(_check_values(values, None, "ids"))
    except NucleiInputError:
        for c in range(NUM_NUCLEUS_CHANNELS):  # name the first bad channel
            _check_values(values[c], where, f"channel {c} ({_CHANNEL_NAMES[c]})")
        raise


def sparse_release(release: Any, where: str | None = None) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Validate a release-format array, reading in full only its nucleus pixels.

    Args:
        release: (H, W, 5) or (H, W, 6) array (channel 5, background, is not used).
        where: the image, for error messages.

    Returns:
        ``((H, W), pixels, ids)``: the flat indices (sorted) of the pixels where some class channel
        is non-zero, and their ids as (5, n) int64 (row c: channel c).

    Raises:
        NucleiInputError: wrong shape, or NaN / infinite / fractional / negative ids (the channel
            is named).
    """
    flat, nucleus = release_nucleus_pixels(release, where)
    pixels = np.flatnonzero(nucleus)
    return np.shape(release)[:2], pixels, release_values(flat, pixels, where)


def release_ids(release: Any, where: str | None = None) -> np.ndarray:
    """Validate a release-format array and return its 5 class channels as (5, H, W) int64.

    Args:
        release: (H, W, 5) or (H, W, 6) array (channel 5, background, is not used).
        where: the image, for error messages.

    Raises:
        NucleiInputError: wrong shape, or bad ids (the channel is named).
    """
    shape, pixels, ids = sparse_release(release, where)
    channels = np.zeros((NUM_NUCLEUS_CHANNELS, shape[0] * shape[1]), dtype=np.int64)
    channels[:, pixels] = ids
    return channels.reshape((NUM_NUCLEUS_CHANNELS,) + shape)


def sparse_instances(
    array: Any, where: str | None = None, what: str = "instance ids"
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an instance map, reading in full only its nucleus pixels.

    Returns:
        ``(pixels, ids)``: flat indices (sorted) of the non-zero pixels and their ids as int64.

    Raises:
        NucleiInputError: as :func:`instance_ids`.
    """
    arr = np.asarray(array)
    flat = arr.reshape(-1)
    if arr.dtype.kind not in "iufb":
        raise NucleiInputError(f"{_prefix(where)}{what} must be numbers, got dtype {arr.dtype}")
    pixels = np.flatnonzero(flat)
    return pixels, _check_values(flat[pixels], where, what)


_CHANNEL_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def _number_channels(ids: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Number the (channel, raw id) nuclei of (5, H, W) ids as the dataset does.

    Returns:
        ``(instance map (H, W) int32, labels)``: nucleus k (1..K) is the k-th (channel, raw id)
        pair in (channel, raw id) order; a pixel shows the nucleus of the last channel claiming it.
    """
    shape = ids.shape[1:]
    instance = np.zeros(shape, dtype=np.int32)
    labels: list[int] = []
    offset = 0
    for c in range(ids.shape[0]):
        claimed = ids[c] > 0
        raw = ids[c][claimed]
        uniques = np.unique(raw)
        if len(uniques):
            # Channels in order, later ones overwrite: the dataset's rule for overlapping pixels.
            instance[claimed] = offset + 1 + np.searchsorted(uniques, raw)
        labels += [CHANNEL_LABELS[c]] * len(uniques)
        offset += len(uniques)
    if offset > np.iinfo(np.int32).max:
        raise NucleiInputError(f"{offset} nuclei do not fit an int32 instance map")
    return instance, labels


def release_to_instances(release: Any, where: str | None = None) -> tuple[np.ndarray, dict[int, int]]:
    """Release form -> instance form, numbered exactly as the dataset's ``instance_mask``.

    Args:
        release: (H, W, 5) or (H, W, 6) array of instance ids per class channel (any numeric dtype).
        where: the image, for error messages (e.g. ``"image 12"``).

    Returns:
        ``(instance_map, class_of_id)``: an (H, W) int32 map (0 = no nucleus, 1..K nuclei, in
        (channel, raw id) order, later channels winning shared pixels) and ``{id: label}`` with
        labels 1..5 (channel j -> label j + 1) for every nucleus 1..K, in order (so
        ``list(class_of_id.values())`` equals the dataset's ``instance_labels``).

    Raises:
        NucleiInputError: wrong shape, or NaN / infinite / fractional / negative ids (the image and
            channel are named).
    """
    instance, labels = _number_channels(release_ids(release, where))
    return instance, {k + 1: label for k, label in enumerate(labels)}


def normalise_classes(
    class_of_id: Mapping[int, int] | Sequence[int] | np.ndarray,
    where: str | None = None,
    num_classes: int = NUM_NUCLEUS_CLASSES,
) -> dict[int, int]:
    """A ``{nucleus id: label}`` dict from a mapping or a sequence (label of id k at position k-1).

    Raises:
        NucleiInputError: a label outside 1..num_classes, or a non-integer id / label.
    """
    if isinstance(class_of_id, Mapping):
        items = class_of_id.items()
    else:
        values = np.asarray(class_of_id)
        if values.ndim != 1:
            raise NucleiInputError(
                f"{_prefix(where)}classes must be a mapping {{id: label}} or a sequence of labels "
                f"(label of nucleus k at position k-1), got an array of shape {values.shape}"
            )
        items = zip(range(1, len(values) + 1), values.tolist())
    out: dict[int, int] = {}
    for key, label in items:
        try:
            k, v = int(key), int(label)
        except (TypeError, ValueError):
            raise NucleiInputError(
                f"{_prefix(where)}nucleus {key!r}: class {label!r} is not an integer"
            ) from None
        if k != key or v != label:
            raise NucleiInputError(f"{_prefix(where)}nucleus {key!r}: id and class must be whole numbers")
        if not 1 <= v <= num_classes:
            raise NucleiInputError(
                f"{_prefix(where)}nucleus {k}: class {v} is outside 1..{num_classes} "
                "(0 is background and has no nuclei)"
            )
        out[k] = v
    return out


def instances_to_release(
    instance_map: Any,
    class_of_id: Mapping[int, int] | Sequence[int] | np.ndarray,
    where: str | None = None,
) -> np.ndarray:
    """Instance form -> release form.

    Args:
        instance_map: (H, W) ids (0 = no nucleus), integer or whole-valued float.
        class_of_id: ``{id: label 1..5}``, or a sequence whose item k-1 is the label of nucleus k
            (the dataset's ``instance_labels``). Entries of ids absent from the map are ignored.
        where: the image, for error messages.

    Returns:
        (H, W, 6) int32: channel ``label - 1`` holds each nucleus's id at its pixels, channel 5 is 1
        where there is no nucleus. ``release_to_instances`` of the result gives back the same
        nuclei (renumbered 1..K in (class, id) order).

    Raises:
        NucleiInputError: map not 2-D, bad ids, ids beyond int32, a nucleus of the map without a
            class, or a class outside 1..5.
    """
    ids = instance_ids(instance_map, where, "instance map ids")
    if ids.ndim != 2:
        raise NucleiInputError(f"{_prefix(where)}an instance map must be 2-D (H, W), got shape {ids.shape}")
    if ids.size and ids.max() > np.iinfo(np.int32).max:
        raise NucleiInputError(
            f"{_prefix(where)}instance ids above {np.iinfo(np.int32).max} do not fit int32"
        )
    classes = normalise_classes(class_of_id, where)
    present = np.unique(ids)
    present = present[present > 0]
    missing = [int(k) for k in present if int(k) not in classes]
    if missing:
        raise NucleiInputError(f"{_prefix(where)}nuclei {missing[:10]} of the instance map have no class")
    label_of = np.zeros(len(present) + 1, dtype=np.int64)  # index 0: background
    label_of[1:] = [classes[int(k)] for k in present]
    label_map = label_of[np.where(ids > 0, np.searchsorted(present, ids) + 1, 0)]  # map without nuclei: all 0
    release = np.zeros(ids.shape + (NUM_NUCLEUS_CHANNELS + 1,), dtype=np.int32)
    for c, label in enumerate(CHANNEL_LABELS):
        release[:, :, c] = np.where(label_map == label, ids, 0)
    release[:, :, NUM_NUCLEUS_CHANNELS] = ids == 0
    return release


def classes_from_semantic(instance_map: Any, semantic_map: Any, where: str | None = None) -> dict[int, int]:
    """Class of each nucleus by majority vote of a semantic map over its pixels.

    Ties go to the lower label; background votes (0) count only when no class pixel exists, and a
    nucleus without any class pixel raises.

    Args:
        instance_map: (H, W) nucleus ids (0 = none).
        semantic_map: (H, W) labels 0..5.
        where: the image, for error messages.

    Returns:
        ``{id: label 1..5}`` for every nucleus of the map.

    Raises:
        NucleiInputError: shape mismatch, bad ids or labels, a nucleus with no class pixel.
    """
    ids = instance_ids(instance_map, where, "instance map ids")
    sem = instance_ids(semantic_map, where, "semantic labels")
    if ids.shape != sem.shape or ids.ndim != 2:
        raise NucleiInputError(
            f"{_prefix(where)}instance map {ids.shape} and semantic map {sem.shape} must be the same (H, W)"
        )
    if sem.size and sem.max() > NUM_NUCLEUS_CLASSES:
        raise NucleiInputError(f"{_prefix(where)}semantic labels must lie in 0..{NUM_NUCLEUS_CLASSES}")
    fg = ids > 0
    present, inverse = np.unique(ids[fg], return_inverse=True)
    votes = np.bincount(
        inverse * (NUM_NUCLEUS_CLASSES + 1) + sem[fg], minlength=len(present) * (NUM_NUCLEUS_CLASSES + 1)
    ).reshape(len(present), NUM_NUCLEUS_CLASSES + 1)[:, 1:]
    empty = votes.sum(axis=1) == 0
    if empty.any():
        raise NucleiInputError(
            f"{_prefix(where)}nuclei {present[empty][:10].tolist()} cover only background pixels of the "
            "semantic map: no class to give them"
        )
    return {int(k): int(v) + 1 for k, v in zip(present, votes.argmax(axis=1))}
