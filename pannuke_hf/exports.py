"""Nuclei in the formats other tools read: per-nucleus CSV, QuPath GeoJSON, 16-bit PNG, release arrays.

One module used by ``pannuke-hf predict --instances``, the notebooks and the demo. Its inputs are
what the instance post-processing returns: an instance map (H, W) of nucleus ids (0 = no
nucleus, 1..K) and ``segments_info`` (``[{"id", "label_id", "score", ...}]``), plus the model's
``id2label``.

Coordinates (CSV and GeoJSON alike) are image pixels with the origin at the top-left *corner* of
the top-left pixel, x to the right, y down: the pixel in row ``r``, column ``c`` covers the square
``[c, c + 1) x [r, r + 1)``, so its centre is ``(c + 0.5, r + 0.5)``. This is QuPath's convention,
so CSV centroids, GeoJSON polygons and the image line up there. ``offset`` (x, y) is added to every
coordinate (e.g. the position of a crop in its slide).

* CSV (:func:`nuclei_records`, :func:`write_nuclei_csv`): one row per nucleus: ``id``, ``class``
  (the class's full name, see below), ``centroid_x``, ``centroid_y`` (mean of its pixel centres), ``area``
  (pixels), ``area_um2`` (µm², at the image's pixel size, default ``MICRONS_PER_PIXEL``), ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (the enclosing pixel edges: x0/y0
  the first column/row, x1/y1 one past the last), ``score``.
* GeoJSON (:func:`nuclei_geojson`): a ``FeatureCollection`` with one ``Feature`` per nucleus: a
  ``Polygon`` (outer ring first, then holes; rings closed, first point repeated) tracing the
  nucleus's pixel edges with the corners cut (scikit-image marching squares at level 0.5 on the
  nucleus mask, 8-connected), so its area is within a fraction of a pixel per corner of the
  pixel count; a nucleus in several disconnected pieces becomes a ``MultiPolygon`` of all of them.
  ``properties``: ``objectType: "detection"`` (light objects: QuPath handles hundreds of
  thousands), ``classification: {"name": <full class name>, "color": [r, g, b]}`` (colours
  from :data:`pannuke_hf.constants.PALETTE`), ``measurements: {"score": ...}``, ``nucleus_id``.
* PNG (:func:`write_instance_png`): the instance map as a 16-bit greyscale PNG (ids up to 65535).
* Release arrays (:func:`write_release_array`): the PanNuke ``masks.npy`` layout
  (N, H, W, 6) (channels 0-4 instance ids per class, channel 5 background), written image by
  image into a memory-mapped ``.npy`` so a whole fold never sits in memory.

Class names: the CSV and the GeoJSON carry the same string, the full name of
:data:`pannuke_hf.constants.CLASS_FULL_NAMES` for PanNuke's classes (``id2label``'s
``"epithelial"`` becomes ``"non-neoplastic epithelial"``, ``"connective"`` ``"connective / soft
tissue"``), unchanged for a model whose ``id2label`` names other classes
(:func:`pannuke_hf.constants.full_class_name`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .constants import MICRONS_PER_PIXEL, PALETTE, full_class_name

__all__ = [
    "CSV_COLUMNS",
    "class_of_segments",
    "nuclei_geojson",
    "nuclei_records",
    "read_instance_png",
    "write_geojson",
    "write_instance_png",
    "write_nuclei_csv",
    "write_release_array",
]

#: Columns of the per-nucleus CSV, in order.
CSV_COLUMNS: tuple[str, ...] = (
    "id",
    "class",
    "centroid_x",
    "centroid_y",
    "area",
    "area_um2",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "score",
)

#: Colour of a class outside the palette.
_OTHER_COLOR: tuple[int, int, int] = (128, 128, 128)

_UINT16_MAX = 65535


def _instance_map(instance_map: Any, name: str = "instance_map") -> np.ndarray:
    """A 2-D integer array of ids >= 0 (torch tensors and PIL images accepted)."""
    if hasattr(instance_map, "detach"):  # torch tensor, without importing torch
        instance_map = instance_map.detach().cpu().numpy()
    ids = np.asarray(instance_map)
    if ids.ndim != 2:
        raise ValueError(f"{name}: expected a (H, W) map of nucleus ids, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: nucleus ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name}: nucleus ids must be >= 0, got {ids.min()}")
    return ids


def _class_name(id2label: Mapping[Any, str], label: int) -> str:
    """The full class name of ``id2label[label]`` whether its keys are ints or strings (as in a
    JSON config); see the module docstring."""
    if label in id2label:
        return full_class_name(str(id2label[label]))
    if str(label) in id2label:
        return full_class_name(str(id2label[str(label)]))
    raise ValueError(f"label_id {label} is not in id2label {dict(id2label)}")


def _segments_by_id(segments_info: Sequence[Mapping[str, Any]], ids: np.ndarray) -> list[Mapping[str, Any]]:
    """Check that every segment's id is present in the map; return the segments in id order."""
    present = np.bincount(ids.ravel()) if ids.size else np.zeros(1, dtype=np.int64)
    seen: set[int] = set()
    for index, segment in enumerate(segments_info):
        sid = int(segment["id"])
        if sid in seen:
            raise ValueError(f"segments_info[{index}]: id {sid} appears twice")
        seen.add(sid)
        if sid <= 0 or sid >= len(present) or present[sid] == 0:
            raise ValueError(f"segments_info[{index}]: nucleus id {sid} has no pixel in the instance map")
    return sorted(segments_info, key=lambda s: int(s["id"]))


def class_of_segments(segments_info: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """``{nucleus id: label_id}`` from ``segments_info`` (the input of ``instances_to_release``)."""
    return {int(s["id"]): int(s["label_id"]) for s in segments_info}


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def nuclei_records(
    instance_map: Any,
    segments_info: Sequence[Mapping[str, Any]],
    id2label: Mapping[Any, str],
    offset: tuple[float, float] = (0, 0),
    microns_per_pixel: float = MICRONS_PER_PIXEL,
) -> list[dict[str, Any]]:
    """One record per nucleus of ``segments_info`` (in id order), with the columns of :data:`CSV_COLUMNS`.

    Args:
        instance_map: (H, W) nucleus ids, 0 = no nucleus.
        segments_info: ``[{"id", "label_id", "score", ...}]`` (the post-processing's output).
        id2label: class names by label id (``model.config.id2label``).
        offset: (x, y) added to centroids and boxes.
        microns_per_pixel: the image's pixel size, for ``area_um2`` (default: PanNuke's 40x).

    Returns:
        A list of dicts: ``id`` (int), ``class`` (str, the full class name), ``centroid_x`` / ``centroid_y`` (float,
        mean pixel centre, see the module docstring), ``area`` (int pixels), ``area_um2`` (float), ``bbox_x0``,
        ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (int pixel edges, x1 / y1 exclusive), ``score``.

    Raises:
        ValueError: a segment id absent from the map, a duplicate id, or a label missing from
            ``id2label``.
    """
    from scipy import ndimage

    ids = _instance_map(instance_map)
    segments = _segments_by_id(segments_info, ids)
    if not segments:
        return []
    top = int(ids.max())
    flat = ids.ravel()
    rows, cols = np.indices(ids.shape)
    areas = np.bincount(flat, minlength=top + 1)
    sum_x = np.bincount(flat, weights=cols.ravel(), minlength=top + 1)
    sum_y = np.bincount(flat, weights=rows.ravel(), minlength=top + 1)
    boxes = ndimage.find_objects(ids.astype(np.int64, copy=False))
    ox, oy = offset
    records = []
    for segment in segments:
        sid = int(segment["id"])
        box_y, box_x = boxes[sid - 1]
        records.append(
            {
                "id": sid,
                "class": _class_name(id2label, int(segment["label_id"])),
                "centroid_x": float(sum_x[sid] / areas[sid] + 0.5 + ox),
                "centroid_y": float(sum_y[sid] / areas[sid] + 0.5 + oy),
                "area": int(areas[sid]),
                "area_um2": float(areas[sid]) * microns_per_pixel**2,
                "bbox_x0": box_x.start + ox,
                "bbox_y0": box_y.start + oy,
                "bbox_x1": box_x.stop + ox,
                "bbox_y1": box_y.stop + oy,
                "score": float(segment.get("score", float("nan"))),
            }
        )
    return records


def write_nuclei_csv(records: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Write :func:`nuclei_records` output as CSV with the header :data:`CSV_COLUMNS` (also when empty)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow(record)


# ---------------------------------------------------------------------------------------------
# GeoJSON (QuPath)
# ---------------------------------------------------------------------------------------------


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring of (row, col) points; > 0 when counter-clockwise in (row, col)."""
    r, c = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(r[:-1], c[1:]) - np.dot(r[1:], c[:-1]))


def _piece_polygons(piece: np.ndarray) -> list[list[np.ndarray]]:
    """Rings of one 8-connected piece (a padded bool crop): ``[[outer, *holes]]`` in (row, col)."""
    from skimage import measure

    contours = measure.find_contours(
        piece.astype(np.float32), 0.5, fully_connected="high", positive_orientation="high"
    )
    outers, holes = [], []
    for contour in contours:
        if len(contour) < 4 or not np.array_equal(contour[0], contour[-1]):
            continue  # cannot happen on a zero-padded mask; guards degenerate output
        (outers if _signed_area(contour) > 0 else holes).append(contour)
    if not outers:
        return []
    # one 8-connected piece has one outer boundary; keep the largest if rounding ever yields more
    outer = max(outers, key=_signed_area)
    return [[outer, *holes]]


def _ring_coordinates(ring: np.ndarray, dx: float, dy: float) -> list[list[float]]:
    """(row, col) contour points of a padded crop -> closed [[x, y], ...] in image coordinates."""
    # contour point (r, c) lies between pixel centres of the crop; pixel centre (r, c) of the
    # crop is image point (c + 0.5 + dx, r + 0.5 + dy) where dx, dy include the padding and offset
    xs = ring[:, 1] + 0.5 + dx
    ys = ring[:, 0] + 0.5 + dy
    points = np.round(np.stack([xs, ys], axis=1), 3).tolist()
    if points[0] != points[-1]:
        points.append(points[0])
    return points


def nuclei_geojson(
    instance_map: Any,
    segments_info: Sequence[Mapping[str, Any]],
    id2label: Mapping[Any, str],
    offset: tuple[float, float] = (0, 0),
) -> dict[str, Any]:
    """Nuclei as a QuPath-importable GeoJSON ``FeatureCollection`` (see the module docstring).

    Args:
        instance_map: (H, W) nucleus ids, 0 = no nucleus.
        segments_info: ``[{"id", "label_id", "score", ...}]``.
        id2label: class names by label id.
        offset: (x, y) added to every coordinate (the crop's position in the full image).

    Returns:
        ``{"type": "FeatureCollection", "features": [...]}``, one feature per segment in id order,
        each with a ``Polygon`` (or ``MultiPolygon`` for a nucleus in several pieces) and
        ``properties`` ``objectType``, ``classification {name, color}``, ``measurements {score}``,
        ``nucleus_id``.
    """
    from scipy import ndimage

    ids = _instance_map(instance_map)
    segments = _segments_by_id(segments_info, ids)
    boxes = ndimage.find_objects(ids.astype(np.int64, copy=False)) if segments else []
    ox, oy = offset
    features = []
    for segment in segments:
        sid, label = int(segment["id"]), int(segment["label_id"])
        box_y, box_x = boxes[sid - 1]
        mask = np.pad(ids[box_y, box_x] == sid, 1)
        pieces, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        dx, dy = box_x.start - 1 + ox, box_y.start - 1 + oy
        polygons = []
        for piece in range(1, count + 1):
            for rings in _piece_polygons(pieces == piece):
                polygons.append([_ring_coordinates(ring, dx, dy) for ring in rings])
        if len(polygons) == 1:
            geometry = {"type": "Polygon", "coordinates": polygons[0]}
        else:
            geometry = {"type": "MultiPolygon", "coordinates": polygons}
        color = PALETTE[label] if 0 <= label < len(PALETTE) else _OTHER_COLOR
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "objectType": "detection",
                    "classification": {
                        "name": _class_name(id2label, label),
                        "color": [int(v) for v in color],
                    },
                    "measurements": {"score": float(segment.get("score", float("nan")))},
                    "nucleus_id": sid,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a GeoJSON object (compact separators: files with many nuclei stay small)."""
    with open(path, "w") as fh:
        json.dump(obj, fh, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# 16-bit PNG
# ---------------------------------------------------------------------------------------------


def write_instance_png(instance_map: Any, path: str | os.PathLike) -> None:
    """Save an instance map as a lossless 16-bit greyscale PNG.

    Raises:
        ValueError: ids above 65535 (a 16-bit PNG cannot hold them; split the image) or negative.
    """
    ids = _instance_map(instance_map)
    if ids.size and ids.max() > _UINT16_MAX:
        raise ValueError(
            f"{path}: nucleus id {int(ids.max())} does not fit a 16-bit PNG (at most {_UINT16_MAX} nuclei)"
        )
    Image.fromarray(ids.astype(np.uint16)).save(path, format="PNG")


def read_instance_png(path: str | os.PathLike) -> np.ndarray:
    """Read a 16-bit instance PNG written by :func:`write_instance_png` as (H, W) int32."""
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Release-format arrays
# ---------------------------------------------------------------------------------------------


def write_release_array(
    path: str | os.PathLike,
    predictions: Iterable[tuple[Any, Sequence[Mapping[str, Any]]]],
    num_images: int,
    dtype: Any = np.int32,
) -> tuple[int, ...]:
    """Write predictions of ``num_images`` images as one release-format array (N, H, W, 6) ``.npy``.

    Each ``(instance_map, segments_info)`` becomes PanNuke's ``masks.npy`` layout with
    :func:`pannuke_hf.nuclei.instances_to_release` and is written into a memory-mapped file
    (``numpy.lib.format.open_memmap``), one image at a time.

    Args:
        path: the ``.npy`` file to write.
        predictions: ``(instance map (H, W), segments_info)`` pairs, all of one size.
        num_images: how many pairs ``predictions`` yields (the first axis of the array).
        dtype: integer dtype of the array (int32 by default; uint16 halves the file when every
            image has fewer than 65536 nuclei).

    Returns:
        the shape written. Raises ``ValueError`` naming the image index on a size mismatch, a
        count different from ``num_images``, or ids that do not fit ``dtype``.
    """
    from numpy.lib.format import open_memmap

    from .nuclei import instances_to_release

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    limit = np.iinfo(dtype).max
    array = None
    written = 0
    try:
        for index, (instance_map, segments) in enumerate(predictions):
            if index >= num_images:
                raise ValueError(f"{path}: got more than num_images={num_images} predictions")
            release = instances_to_release(
                _instance_map(instance_map, f"image {index}"),
                class_of_segments(segments),
                where=f"image {index}",
            )
            if array is None:
                array = open_memmap(path, mode="w+", dtype=dtype, shape=(num_images, *release.shape))
            elif release.shape != array.shape[1:]:
                raise ValueError(
                    f"{path}: image {index} has size {release.shape[:2]}, the first image {array.shape[1:3]}"
                )
            if release.max(initial=0) > limit:
                raise ValueError(
                    f"{path}: image {index} has ids above {limit}, the limit of {np.dtype(dtype)}"
                )
            array[index] = release
            written += 1
        if written != num_images:
            raise ValueError(f"{path}: expected {num_images} predictions, got {written}")
        array.flush()
        return tuple(array.shape)
    finally:
        del array
