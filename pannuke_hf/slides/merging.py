"""Nuclei of one region, each reported once: post-processing + ownership by centroid.

:func:`region_nuclei` runs the image processor's ``post_process_instance_segmentation`` (the
same call :func:`pannuke_hf.inference.predict_instances` makes) on one region's maps, measures the
nuclei with :func:`pannuke_hf.exports.nuclei_records` and outlines them with
:func:`pannuke_hf.exports.nuclei_geojson`, then keeps only the nuclei whose centroid lies in the
region's core. Cores tile the slide, so every nucleus has exactly one owner; as the margin around
the core is wider than a nucleus, the owner sees it whole. Nothing slide-wide is kept: memory is
one region's maps and nuclei, whatever the slide's size.

Coordinates: the processor works in model pixels; everything returned is in **level-0 pixels**
of the slide (``level0_per_model`` = level-0 pixels per model pixel; areas in level-0 pixels
scale by its square).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["region_nuclei", "wkt_of"]


def _scale_coordinates(value: Any, factor: float) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], int | float):
        return [round(value[0] * factor, 3), round(value[1] * factor, 3)]
    return [_scale_coordinates(v, factor) for v in value]


def wkt_of(geometry: dict[str, Any]) -> str:
    """WKT of a GeoJSON Polygon / MultiPolygon (what shapely, geopandas and QuPath scripts read)."""

    def ring(points):
        return "(" + ", ".join(f"{x:g} {y:g}" for x, y in points) + ")"

    def polygon(rings):
        return "(" + ", ".join(ring(r) for r in rings) + ")"

    if geometry["type"] == "Polygon":
        return "POLYGON " + polygon(geometry["coordinates"])
    return "MULTIPOLYGON (" + ", ".join(polygon(p) for p in geometry["coordinates"]) + ")"


def region_nuclei(
    maps: np.ndarray,
    num_labels: int,
    has_hv: bool,
    box: tuple[int, int, int, int],
    core: tuple[int, int, int, int],
    level0_per_model: float,
    id2label: dict[Any, str],
    post_process: Any,
    min_size: int = 10,
) -> tuple[list[dict[str, Any]], int]:
    """Nuclei owned by one region, in level-0 pixels.

    Args:
        maps: (C, h, w) float32 over ``box``: class logits (``num_labels``), then, when
            ``has_hv``, nucleus logits (2) and hv maps (2).
        box, core: the region's post-processed box and core, model pixels of the slide.
        level0_per_model: level-0 pixels per model pixel.
        id2label: class names by label id.
        post_process: the processor's ``post_process_instance_segmentation``.
        min_size: nuclei with fewer (model) pixels are dropped.

    Returns:
        ``(records, cut)``: one dict per owned nucleus, in the processor's id order (``local_id``,
        ``label_id``, ``class``, ``score``, ``centroid_x``/``_y``, ``area``, ``bbox_x0``..``bbox_y1``,
        ``geometry`` (GeoJSON JSON string), ``outline`` (WKT)), and how many owned nuclei touch
        the box's edge inside the slide (the margin was too narrow for them).
    """
    import torch

    from ..exports import nuclei_geojson, nuclei_records

    tensor = torch.from_numpy(np.ascontiguousarray(maps))
    outputs = SimpleNamespace(logits=tensor[None, :num_labels], nuclei_logits=None, hv_maps=None)
    if has_hv:
        outputs.nuclei_logits = tensor[None, num_labels : num_labels + 2]
        outputs.hv_maps = tensor[None, num_labels + 2 : num_labels + 4]
    result = post_process(outputs, min_size=min_size)[0]
    instances = result["segmentation"].numpy()
    segments = result["segments_info"]
    if not segments:
        return [], 0
    bx0, by0 = box[0], box[1]
    records = nuclei_records(instances, segments, id2label, offset=(bx0, by0))
    owned = [
        i
        for i, rec in enumerate(records)
        if core[0] <= rec["centroid_x"] < core[2] and core[1] <= rec["centroid_y"] < core[3]
    ]
    if not owned:
        return [], 0
    kept = [segments[i] for i in owned]
    features = nuclei_geojson(instances, kept, id2label, offset=(bx0, by0))["features"]
    f = float(level0_per_model)
    out, cut = [], 0
    width, height = box[2] - box[0], box[3] - box[1]
    for i, feature in zip(owned, features):
        rec = records[i]
        # touching the box edge where the box does not end at the slide edge: cut by the margin
        if (
            (rec["bbox_x0"] == bx0 and box[0] != core[0])
            or (rec["bbox_y0"] == by0 and box[1] != core[1])
            or (rec["bbox_x1"] == bx0 + width and box[2] != core[2])
            or (rec["bbox_y1"] == by0 + height and box[3] != core[3])
        ):
            cut += 1
        geometry = feature["geometry"]
        if f != 1.0:
            geometry = {
                "type": geometry["type"],
                "coordinates": _scale_coordinates(geometry["coordinates"], f),
            }
        out.append(
            {
                "local_id": int(rec["id"]),
                "label_id": int(segments[i]["label_id"]),
                "class": rec["class"],
                "score": float(rec["score"]),
                "centroid_x": rec["centroid_x"] * f,
                "centroid_y": rec["centroid_y"] * f,
                "area": rec["area"] * f * f,
                "bbox_x0": rec["bbox_x0"] * f,
                "bbox_y0": rec["bbox_y0"] * f,
                "bbox_x1": rec["bbox_x1"] * f,
                "bbox_y1": rec["bbox_y1"] * f,
                "geometry": json.dumps(geometry, separators=(",", ":")),
                "outline": wkt_of(geometry),
            }
        )
    return out, cut
