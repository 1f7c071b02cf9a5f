"""``NAME_labels.tiff``: a slide-wide map of nucleus classes, pyramidal and tiled, for QuPath and OpenSlide.

:func:`write_label_map` rasterises the nuclei of a finished ``NAME_cells.parquet`` into a
uint8 TIFF the size of the slide's level 0: 0 = no nucleus, otherwise the nucleus's
``label_id`` (1..5 for PanNuke models, as in the model's ``id2label``). The file holds:

* level 0 and sub-resolutions downsampled ``downsample`` times each (4 by default) until the
  longest side fits in one tile, as successive tiled pages (what OpenSlide's generic tiled TIFF
  reader and QuPath take as a pyramid; sub-IFDs are not seen by OpenSlide);
* square tiles (512 pixels by default), deflate (zlib) compressed: lossless, and a label map
  compresses to a few percent;
* an ``ImageDescription`` naming the labels (JSON) and, when ``mpp`` is given, the resolution
  tags in pixels per centimetre.

How a pixel gets its label: the outlines (``outline``, WKT in level-0 pixels, the boundary drawn
between pixel centres) are filled at pixel centres (:func:`skimage.draw.polygon`), which gives
back exactly the pixels the model's instance map held where ``level0_per_model`` is 1.
(``cv2.fillPoly`` counts pixels on the outline as inside: nuclei came out one pixel wider.)
Level ``k`` (downsample ``d``) is the nearest downsampling of level 0: its pixel ``(i, j)`` is
level 0's pixel ``(i * d + d // 2, j * d + d // 2)``, the one at (or just right and below)
the centre of the area it covers; each level is filled from the outlines directly, so no level
is ever held whole. Where nuclei overlap (neighbouring regions of the slide are post-processed
apart), the later row (higher ``id``) wins.

Memory does not grow with the slide: the map is written tile by tile from one band of tile rows
at a time (``tile`` rows x the level's width, uint8). A band is filled from the nuclei whose
bounding box meets its rows, read in row order, in batches of at most :data:`BATCH_ROWS`, from
the row groups whose statistics say they may hold such nuclei (the pipeline writes one row group
per chunk of regions, so a level-0 band reads one or two). A first pass over the small columns
checks the table before anything is written. The file is written under a ``.partial`` name and
renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .reading import SlideError

__all__ = ["LABEL_MAP_COLUMNS", "label_map_levels", "write_label_map"]

#: Columns of ``NAME_cells.parquet`` the label map is made from.
LABEL_MAP_COLUMNS: tuple[str, ...] = (
    "id",
    "label_id",
    "class",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "outline",
)
_BOX = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
#: Nuclei read at a time: at coarse levels one band spans much of the slide, so a band's nuclei
#: are filled in batches of this many (in row order) rather than all at once.
BATCH_ROWS = 8192
#: Level-0 pixels above which the file is a BigTIFF (a plain TIFF ends at 4 GB, and the
#: compressed size is not known before it is written).
_BIGTIFF_PIXELS = 2**30


def label_map_levels(
    width: int, height: int, tile: int = 512, downsample: int = 4
) -> list[tuple[int, int, int]]:
    """``(downsample, width, height)`` of each level: level 0, then ``downsample`` times smaller
    each (sides rounded up) until the longest side is at most ``tile``."""
    levels = [(1, width, height)]
    while max(levels[-1][1:]) > tile:
        d = levels[-1][0] * downsample
        levels.append((d, math.ceil(width / d), math.ceil(height / d)))
    return levels


class _Cells:
    """The cells table, read in bounded batches, in row order, by the level-0 rows nuclei meet."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path = path
        # pre-buffering reads ahead of the batches asked for: off, memory stays one batch
        self.file = pq.ParquetFile(path, pre_buffer=False)
        names = self.file.schema_arrow.names
        missing = [c for c in LABEL_MAP_COLUMNS if c not in names]
        if missing:
            raise SlideError(f"{path}: not a cells table, no column {', '.join(missing)}")
        # rows of level 0 each row group's nuclei span, from its statistics (none: everywhere)
        meta = self.file.metadata
        where = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
        self.spans = []
        for g in range(meta.num_row_groups):
            lo, hi = -math.inf, math.inf
            y0, y1 = (meta.row_group(g).column(where[c]).statistics for c in ("bbox_y0", "bbox_y1"))
            if y0 is not None and y0.has_min_max and y1 is not None and y1.has_min_max:
                lo, hi = float(y0.min), float(y1.max)
            self.spans.append((lo, hi))

    def batches(self, columns: list[str], y_lo: float = -math.inf, y_hi: float = math.inf):
        """Batches (at most :data:`BATCH_ROWS` rows) of the nuclei with ``bbox_y1 > y_lo`` and ``bbox_y0 <= y_hi``."""
        import pyarrow.compute as pc

        groups = [g for g, (lo, hi) in enumerate(self.spans) if hi > y_lo and lo <= y_hi]
        if not groups:
            return
        for batch in self.file.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=columns):
            if y_lo != -math.inf or y_hi != math.inf:
                meets = pc.and_(
                    pc.greater(batch.column("bbox_y1"), y_lo), pc.less_equal(batch.column("bbox_y0"), y_hi)
                )
                batch = batch.filter(meets)
            if batch.num_rows:
                yield batch


def _check_table(cells: _Cells, width: int, height: int) -> dict[int, str]:
    """One pass over the small columns: every row usable; returns the labels present ``{label_id: class}``."""
    import pyarrow.compute as pc

    path = cells.path
    labels: dict[int, str] = {}
    for batch in cells.batches(["id", "label_id", "class", *_BOX]):
        if batch.num_rows == 0:
            continue
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        label = batch.column("label_id")
        bad = np.asarray(pc.is_null(label)).copy()
        values = label.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        bad |= (values < 1) | (values > 255)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            shown = "null" if not label[k].is_valid else values[k]
            raise SlideError(f"{path}: nucleus id {ids[k]}: label_id {shown} is not a class label (1..255)")
        box = np.stack([batch.column(c).fill_null(np.nan).to_numpy(zero_copy_only=False) for c in _BOX], 1)
        bad = ~np.isfinite(box).all(1)
        bad |= (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise SlideError(
                f"{path}: nucleus id {ids[k]}: bounding box {box[k].tolist()} is empty or not finite"
            )
        # wholly outside the slide: the table is not this slide's (or its size was given wrong)
        bad = (box[:, 0] >= width) | (box[:, 1] >= height) | (box[:, 2] <= 0) | (box[:, 3] <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise SlideError(
                f"{path}: nucleus id {ids[k]}: bounding box {box[k].tolist()} lies outside the "
                f"{width}x{height} slide"
            )
        classes = batch.column("class").to_pylist()
        for v in np.unique(values):
            labels.setdefault(int(v), str(classes[int(np.flatnonzero(values == v)[0])]))
    return dict(sorted(labels.items()))


def _first_sample(lo: np.ndarray, d: int) -> np.ndarray:
    """Index of the first pixel of a level (downsample ``d``) whose sample point is at or after ``lo``.

    Pixel ``i`` samples the level-0 point ``i * d + d // 2 + 0.5`` (the centre of level-0 pixel
    ``i * d + d // 2``).
    """
    return np.ceil((lo - 0.5 - d // 2) / d)


def _fill_band(band: np.ndarray, rows: int, cols: int, row0: int, d: int, nuclei) -> None:
    """Fill the nuclei (a pyarrow table: id order) into ``band``, rows ``row0..`` of a level."""
    import shapely
    from skimage.draw import polygon

    if nuclei.num_rows == 0:
        return
    box = {c: nuclei.column(c).to_numpy(zero_copy_only=False) for c in _BOX}
    # a nucleus shows at this level only if a sample point lies in its box (outlines lie inside
    # their boxes): at coarse levels most nuclei are smaller than a pixel and are skipped here
    ix, iy = _first_sample(box["bbox_x0"], d), _first_sample(box["bbox_y0"], d)
    shows = (ix * d + d // 2 + 0.5 < box["bbox_x1"]) & (iy * d + d // 2 + 0.5 < box["bbox_y1"])
    keep = np.flatnonzero(shows)
    if keep.size == 0:
        return
    ids = nuclei.column("id").to_numpy(zero_copy_only=False)[keep]
    labels = nuclei.column("label_id").to_numpy(zero_copy_only=False)[keep]
    outlines = nuclei.column("outline").take(keep).to_pylist()
    shape = (rows, cols)
    offset = 0.5 + d // 2  # level-0 point -> level pixel index: (v - offset) / d
    for nucleus, label, wkt in zip(ids, labels, outlines):
        try:
            geometry = shapely.from_wkt(wkt)
        except shapely.errors.GEOSException as err:
            raise SlideError(f"nucleus id {nucleus}: outline is not WKT ({err})") from err
        if geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            kind = "null" if geometry is None else geometry.geom_type
            raise SlideError(f"nucleus id {nucleus}: outline is a {kind}, not a polygon")
        for part in getattr(geometry, "geoms", [geometry]):

            def pixels(ring):
                xy = np.asarray(ring.coords)
                return polygon((xy[:, 1] - offset) / d - row0, (xy[:, 0] - offset) / d, shape)

            holes = [pixels(h) for h in part.interiors]
            # a hole keeps what was there before this nucleus (another nucleus may sit in it)
            kept = [band[r, c] for r, c in holes]
            r, c = pixels(part.exterior)
            band[r, c] = label
            for (r, c), values in zip(holes, kept):
                band[r, c] = values


def _level_tiles(cells: _Cells, d: int, width: int, height: int, tile: int) -> Iterator[np.ndarray]:
    """The tiles of one level in row-major order, one band of tile rows rasterised at a time."""
    columns = ["id", "label_id", *_BOX, "outline"]
    tiles_across = math.ceil(width / tile)
    band = np.zeros((tile, tiles_across * tile), dtype=np.uint8)
    for row0 in range(0, height, tile):
        rows = min(tile, height - row0)
        band[:] = 0
        # level-0 rows whose centres this band samples: row0 * d + d // 2 ... (row0 + rows - 1) * d + d // 2
        y_lo = row0 * d + d // 2 + 0.5
        y_hi = (row0 + rows - 1) * d + d // 2 + 0.5
        try:
            for nuclei in cells.batches(columns, y_lo, y_hi):
                _fill_band(band, rows, width, row0, d, nuclei)
        except SlideError as err:
            raise SlideError(f"{cells.path}: {err}") from None
        for col in range(tiles_across):
            yield band[:, col * tile : (col + 1) * tile].copy()


def write_label_map(
    cells_parquet: str | os.PathLike,
    width: int,
    height: int,
    out_path: str | os.PathLike,
    tile: int = 512,
    downsample: int = 4,
    mpp: float | None = None,
) -> Path:
    """Write the class label map of a slide's nuclei as a pyramidal tiled TIFF (see the module docstring).

    Args:
        cells_parquet: the slide's ``NAME_cells.parquet`` (columns :data:`LABEL_MAP_COLUMNS`,
            level-0 pixels).
        width, height: the slide's level-0 size in pixels.
        out_path: the TIFF to write (``NAME_labels.tiff`` beside the other outputs).
        tile: tile side in pixels (a multiple of 16, as TIFF requires).
        downsample: size ratio of successive levels (>= 2).
        mpp: µm per level-0 pixel, recorded in the resolution tags (None: not recorded).

    Returns:
        ``out_path``.

    Raises:
        SlideError: the table is missing or unreadable, lacks a column, or has a row that cannot be
            drawn (a label outside 1..255, an empty or non-finite box, a box outside the slide, an
            outline that is not a polygon): one line naming the file and the nucleus id. Nothing
            is left at ``out_path``.
        ValueError: ``width``, ``height``, ``tile`` or ``downsample`` unusable.
    """
    import pyarrow as pa
    import tifffile

    from .writing import _replace_atomic

    width, height, tile, downsample = int(width), int(height), int(tile), int(downsample)
    if width < 1 or height < 1:
        raise ValueError(f"label map size must be positive, got {width}x{height}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if downsample < 2:
        raise ValueError(f"downsample must be >= 2, got {downsample}")
    path = Path(cells_parquet)
    out_path = Path(out_path)
    try:
        cells = _Cells(path)
        labels = _check_table(cells, width, height)
    except (OSError, pa.ArrowException) as err:
        raise SlideError(f"{path}: cannot read the cells table ({str(err).splitlines()[0]})") from err

    levels = label_map_levels(width, height, tile, downsample)
    description = json.dumps(
        {
            "pannuke_hf": "nucleus class label map",
            "labels": {"0": "background", **{str(k): v for k, v in labels.items()}},
            "downsample": downsample,
        }
    )

    def write(partial: Path) -> None:
        with tifffile.TiffWriter(partial, bigtiff=width * height > _BIGTIFF_PIXELS) as tif:
            for k, (d, w, h) in enumerate(levels):
                extra = {}
                if mpp:
                    per_cm = 1e4 / (mpp * d)
                    extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                tif.write(
                    _level_tiles(cells, d, w, h, tile),
                    shape=(h, w),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="minisblack",
                    compression="zlib",
                    description=description if k == 0 else None,
                    metadata=None,
                    subfiletype=1 if k else 0,
                    **extra,
                )

    try:
        _replace_atomic(write, out_path)
    except (OSError, pa.ArrowException) as err:
        raise SlideError(f"{out_path}: cannot write the label map ({str(err).splitlines()[0]})") from err
    return out_path
