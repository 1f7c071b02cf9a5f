"""Outputs, streamed: per-chunk part files while the slide runs, the final files at the end.

While a slide runs, every finished chunk of regions becomes ``<out>/<name>.parts/part-NNNNNN.parquet``
(its nuclei) and then ``part-NNNNNN.json`` (what was done: regions, skipped, failed, seconds,
nuclei per class): the JSON is the chunk's *done* record, written last and renamed into place, so a
run killed at any moment leaves only complete chunks; a re-run does the others
(:func:`done_chunks`). When all chunks are done, :func:`finalize` streams the parts, chunk by
chunk, into the final files, each written under a ``.partial`` name and renamed when complete:

* ``NAME_cells.parquet``: one row per nucleus (columns :data:`CELL_COLUMNS`);
* ``NAME.geojson.gz`` (or ``NAME.geojson``): QuPath detections, as :func:`pannuke_hf.exports.nuclei_geojson`
  writes them, one feature per row with ``nucleus_id`` equal to the row's ``id``;
* ``NAME_thumbnail.png``: the slide small, tissue outlined, nuclei as class-coloured dots;
* ``NAME_summary.json`` last: its presence marks the slide finished.

Ids run 1..N in chunk order, then in each region's raster order, so they do not depend on how
the work was scheduled. Memory: one chunk's nuclei at a time.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CELL_COLUMNS",
    "slide_name",
    "done_chunks",
    "finalize",
    "output_paths",
    "write_part",
]

#: Columns of ``NAME_cells.parquet``: level-0 pixels unless the name says µm.
CELL_COLUMNS: tuple[str, ...] = (
    "id",
    "class",
    "label_id",
    "score",
    "centroid_x",
    "centroid_y",
    "centroid_x_um",
    "centroid_y_um",
    "area_px",
    "area_um2",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "outline",
)

_PART_COLUMNS = (
    "region",
    "local_id",
    "label_id",
    "class",
    "score",
    "centroid_x",
    "centroid_y",
    "area",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "geometry",
    "outline",
)


def slide_name(path: str | os.PathLike) -> str:
    """Stem of a slide's outputs: the file name without its extension (``.ome.tif(f)`` as one)."""
    name = Path(path).name
    for double in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return Path(name).stem


def output_paths(out_dir: str | os.PathLike, name: str, geojson_gzip: bool = True) -> dict[str, Path]:
    """Where a slide's files go."""
    out = Path(out_dir)
    return {
        "cells": out / f"{name}_cells.parquet",
        "geojson": out / (f"{name}.geojson.gz" if geojson_gzip else f"{name}.geojson"),
        "summary": out / f"{name}_summary.json",
        "thumbnail": out / f"{name}_thumbnail.png",
        "label_map": out / f"{name}_labels.tiff",
        "parts": out / f"{name}.parts",
    }


def _replace_atomic(write, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def _part_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("region", pa.int64()),
            ("local_id", pa.int64()),
            ("label_id", pa.int16()),
            ("class", pa.string()),
            ("score", pa.float32()),
            ("centroid_x", pa.float64()),
            ("centroid_y", pa.float64()),
            ("area", pa.float64()),
            ("bbox_x0", pa.float64()),
            ("bbox_y0", pa.float64()),
            ("bbox_x1", pa.float64()),
            ("bbox_y1", pa.float64()),
            ("geometry", pa.string()),
            ("outline", pa.string()),
        ]
    )


def write_part(parts_dir: Path, chunk: int, records: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """Write one finished chunk: its nuclei (Parquet), then its done record (JSON), each atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts_dir.mkdir(parents=True, exist_ok=True)
    schema = _part_schema()
    columns = {name: [r[name] for r in records] for name in _PART_COLUMNS}
    table = pa.table(columns, schema=schema)
    _replace_atomic(lambda p: pq.write_table(table, p), parts_dir / f"part-{chunk:06d}.parquet")
    _replace_atomic(lambda p: p.write_text(json.dumps(info)), parts_dir / f"part-{chunk:06d}.json")


def done_chunks(parts_dir: Path) -> dict[int, dict[str, Any]]:
    """Done records of the chunks finished by earlier runs (``{chunk: info}``)."""
    done = {}
    if not parts_dir.is_dir():
        return done
    for path in parts_dir.glob("part-*.json"):
        try:
            chunk = int(path.stem.split("-")[1])
            info = json.loads(path.read_text())
        except (ValueError, json.JSONDecodeError):
            continue  # a damaged record: the chunk is done again
        if (parts_dir / f"part-{chunk:06d}.parquet").is_file():
            done[chunk] = info
    return done


def _open_text(path: Path, gzipped: bool):
    """A text file to write, gzipped without a time stamp: the same nuclei give the same bytes."""
    if not gzipped:
        return open(path, "w", encoding="utf-8")
    return io.TextIOWrapper(gzip.GzipFile(path, "wb", mtime=0), encoding="utf-8")


def _iter_parts(parts_dir: Path, chunks: int) -> Iterator[Any]:
    import pyarrow.parquet as pq

    for chunk in range(chunks):
        yield pq.read_table(parts_dir / f"part-{chunk:06d}.parquet")


def finalize(
    paths: dict[str, Path],
    chunks: int,
    slide_mpp: float,
    thumbnail: np.ndarray,
    thumb_scale: float,
    tissue_outline: list[np.ndarray],
    summary: dict[str, Any],
    before_summary: Any = None,
) -> dict[str, Any]:
    """Stream the parts into the final files (see the module docstring); returns the summary written.

    ``before_summary(summary)``, when given, runs once the other files are in place and before the
    summary (which marks the slide finished) is written: more outputs made from them (the label map).
    """
    import time

    import cv2
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..constants import PALETTE

    start = time.perf_counter()

    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("class", pa.string()),
            ("label_id", pa.int16()),
            ("score", pa.float32()),
            ("centroid_x", pa.float64()),
            ("centroid_y", pa.float64()),
            ("centroid_x_um", pa.float64()),
            ("centroid_y_um", pa.float64()),
            ("area_px", pa.float64()),
            ("area_um2", pa.float64()),
            ("bbox_x0", pa.float64()),
            ("bbox_y0", pa.float64()),
            ("bbox_x1", pa.float64()),
            ("bbox_y1", pa.float64()),
            ("outline", pa.string()),
        ]
    )
    parts = paths["parts"]
    cells_partial = paths["cells"].with_name(paths["cells"].name + ".partial")
    geo_partial = paths["geojson"].with_name(paths["geojson"].name + ".partial")
    thumb = np.ascontiguousarray(thumbnail.copy())
    cv2.polylines(thumb, [c.astype(np.int32) for c in tissue_outline], True, (0, 160, 0), 1, cv2.LINE_AA)
    per_class: dict[str, int] = {}
    next_id = 1
    try:
        with (
            pq.ParquetWriter(cells_partial, schema) as writer,
            _open_text(geo_partial, paths["geojson"].suffix == ".gz") as geo,
        ):
            geo.write('{"type":"FeatureCollection","features":[')
            first = True
            for table in _iter_parts(parts, chunks):
                n = table.num_rows
                if n == 0:
                    continue
                cols = table.to_pydict()
                ids = np.arange(next_id, next_id + n, dtype=np.int64)
                next_id += n
                cx, cy = np.asarray(cols["centroid_x"]), np.asarray(cols["centroid_y"])
                area = np.asarray(cols["area"])
                out = {
                    "id": ids,
                    "class": cols["class"],
                    "label_id": cols["label_id"],
                    "score": cols["score"],
                    "centroid_x": cx,
                    "centroid_y": cy,
                    "centroid_x_um": cx * slide_mpp,
                    "centroid_y_um": cy * slide_mpp,
                    "area_px": area,
                    "area_um2": area * slide_mpp**2,
                    "bbox_x0": cols["bbox_x0"],
                    "bbox_y0": cols["bbox_y0"],
                    "bbox_x1": cols["bbox_x1"],
                    "bbox_y1": cols["bbox_y1"],
                    "outline": cols["outline"],
                }
                writer.write_table(pa.table(out, schema=schema))
                for k in range(n):
                    label = int(cols["label_id"][k])
                    name = cols["class"][k]
                    per_class[name] = per_class.get(name, 0) + 1
                    color = PALETTE[label] if 0 <= label < len(PALETTE) else (128, 128, 128)
                    feature = (
                        '{"type":"Feature","geometry":'
                        + cols["geometry"][k]
                        + ',"properties":{"objectType":"detection",'
                        '"classification":'
                        + json.dumps(
                            {"name": name[:1].upper() + name[1:], "color": list(color)}, separators=(",", ":")
                        )
                        + ',"measurements":'
                        + json.dumps({"score": float(cols["score"][k])})
                        + ',"nucleus_id":'
                        + str(int(ids[k]))
                        + "}}"
                    )
                    geo.write(feature if first else "," + feature)
                    first = False
                    px = (int(cx[k] * thumb_scale), int(cy[k] * thumb_scale))
                    cv2.circle(thumb, px, 1, tuple(int(v) for v in color), -1)
            geo.write("]}")
        os.replace(cells_partial, paths["cells"])
        os.replace(geo_partial, paths["geojson"])
    finally:
        for p in (cells_partial, geo_partial):
            if p.exists():
                p.unlink()
    from PIL import Image

    _replace_atomic(lambda p: Image.fromarray(thumb).save(p, format="PNG"), paths["thumbnail"])
    summary["nuclei"] = next_id - 1
    seconds = summary.setdefault("seconds", {})
    seconds["write"] = seconds.get("write", 0.0) + time.perf_counter() - start
    summary["nuclei_per_class"] = dict(sorted(per_class.items()))
    tissue = summary.get("tissue_mm2") or 0.0
    summary["nuclei_per_mm2"] = (next_id - 1) / tissue if tissue > 0 else None
    summary["nuclei_per_class_per_mm2"] = (
        {k: v / tissue for k, v in per_class.items()} if tissue > 0 else None
    )
    if before_summary is not None:
        before_summary(summary)
    _replace_atomic(lambda p: p.write_text(json.dumps(summary, indent=2, default=float)), paths["summary"])
    return summary
