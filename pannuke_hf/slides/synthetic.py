"""Generated whole slides for tests and benchmarks: a pyramidal, tiled, JPEG TIFF and its true nuclei.

:func:`make_synthetic_slide` writes, band by band (never the whole image in memory):

* ``OUT.tiff``: an Aperio-style pyramidal TIFF (level 0, then levels downsampled 4x until the
  longest side is under 1024 pixels), 256x256 JPEG tiles, ``MPP = <mpp>`` in the
  ``ImageDescription``, so OpenSlide reads it as Aperio with its µm per pixel;
* ``OUT_truth.tiff`` (unless ``truth=False``): the true nuclei as a tiled uint32 TIFF of instance
  ids at level 0 (0 = no nucleus), zlib-compressed, and ``OUT_truth.parquet``: ``id``,
  ``label_id`` (1-5) and ``class`` of every true nucleus.

Content: the slide is drawn on a virtual canvas at 0.25 µm/px (the generator's patches are 40x)
and resampled to ``mpp`` (area average for the image, nearest for the ids). The canvas holds
near-white background and a rounded tissue region (a superellipse covering ``tissue_fraction`` of
the slide, at patch granularity) filled with 256x256 patches of
:func:`pannuke_hf.data.synthetic.make_synthetic_patch` (touching same-class nuclei included).
Generating a patch takes ~30 ms, so a bank of ``bank_size`` distinct patches is drawn once and
placed rotated by a multiple of 90 degrees, chosen by a hash of the patch position: a 4 Gpx slide
is then mostly JPEG encoding, which runs in threads. The patch grid is offset from the TIFF tile
grid and from the pipeline's regions, so many nuclei lie across tile borders.
"""

from __future__ import annotations

import math
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..constants import MICRONS_PER_PIXEL

__all__ = ["CANVAS_MPP", "make_synthetic_slide", "read_truth_region"]

#: µm per pixel of the generator's patches (PanNuke is 40x).
CANVAS_MPP = MICRONS_PER_PIXEL
#: Offset of the patch grid on the canvas (pixels): not a multiple of any tile size in use.
GRID_OFFSET = (77, 141)
#: Side of the TIFF tiles.
TILE = 256
#: Background grey level and its noise.
_BACKGROUND = 242
#: Area of the superellipse |u|^4 + |v|^4 <= 1 inside the square [-1, 1]^2, as a fraction.
_SUPERELLIPSE_FILL = 0.9270
#: Id stride per canvas patch: a patch holds fewer nuclei than this.
_ID_STRIDE = 128


def _bank(seed: int, size: int, touching: float) -> tuple[np.ndarray, np.ndarray, list[dict[int, int]]]:
    """``size`` generated patches: images (N, 256, 256, 3) uint8, instance maps (N, 256, 256) int32, classes."""
    from ..data.synthetic import make_synthetic_patch
    from ..nuclei import release_to_instances

    images, maps, classes = [], [], []
    for index in range(size):
        image, masks, _ = make_synthetic_patch(seed, 1, 5 + index, quirks=False, touching=touching)
        instances, class_of = release_to_instances(masks)
        images.append(image.astype(np.uint8))
        maps.append(instances.astype(np.int32))
        classes.append(class_of)
    return np.stack(images), np.stack(maps), classes


class _Canvas:
    """The virtual 0.25 µm/px canvas: which patch (bank entry, rotation) sits where, and tissue."""

    def __init__(
        self, width: int, height: int, seed: int, bank_size: int, tissue_fraction: float, touching: float
    ):
        from ..constants import PATCH_SIZE

        self.patch = PATCH_SIZE
        self.width, self.height = width, height
        self.ox, self.oy = GRID_OFFSET
        self.cols = math.ceil((width - self.ox) / self.patch) + 1
        self.rows = math.ceil((height - self.oy) / self.patch) + 1
        self.images, self.maps, self.classes = _bank(seed, bank_size, touching)
        rng = np.random.default_rng([seed, 7])
        self.choice = rng.integers(0, bank_size, size=(self.rows + 1, self.cols + 1))
        self.rotation = rng.integers(0, 4, size=(self.rows + 1, self.cols + 1))
        radius = math.sqrt(min(max(tissue_fraction, 0.0), _SUPERELLIPSE_FILL) / _SUPERELLIPSE_FILL)
        # patch centre in [-1, 1] over the canvas; tissue inside the superellipse of that radius
        cy = (self.oy + (np.arange(-1, self.rows) + 0.5) * self.patch) / height * 2 - 1
        cx = (self.ox + (np.arange(-1, self.cols) + 0.5) * self.patch) / width * 2 - 1
        inside = cy[:, None] ** 4 + cx[None, :] ** 4 <= radius**4
        self.tissue = inside  # index [i + 1, j + 1] for patch (i, j), i >= -1

    def patch_at(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(image, global instance ids, bank index) of patch (i, j) (i, j >= -1), None outside tissue."""
        if not (-1 <= i < self.rows and -1 <= j < self.cols) or not self.tissue[i + 1, j + 1]:
            return None
        b = int(self.choice[i + 1, j + 1])
        k = int(self.rotation[i + 1, j + 1])
        ids = np.rot90(self.maps[b], k)
        base = ((i + 1) * (self.cols + 1) + (j + 1)) * _ID_STRIDE
        return np.rot90(self.images[b], k), np.where(ids > 0, ids + base, 0).astype(np.uint32), b

    def region(self, x0: int, y0: int, x1: int, y1: int, with_ids: bool, rng: np.random.Generator):
        """Canvas pixels [y0, y1) x [x0, x1): RGB uint8 and (optionally) uint32 ids."""
        h, w = y1 - y0, x1 - x0
        image = np.full((h, w, 3), _BACKGROUND, dtype=np.uint8)
        noise = rng.integers(-2, 3, size=(h, w, 1), dtype=np.int16)
        image = (image.astype(np.int16) + noise).astype(np.uint8)
        ids = np.zeros((h, w), dtype=np.uint32) if with_ids else None
        p = self.patch
        for i in range((y0 - self.oy) // p, (y1 - 1 - self.oy) // p + 1):
            for j in range((x0 - self.ox) // p, (x1 - 1 - self.ox) // p + 1):
                found = self.patch_at(i, j)
                if found is None:
                    continue
                py, px = self.oy + i * p, self.ox + j * p
                sy0, sx0 = max(py, y0), max(px, x0)
                sy1, sx1 = min(py + p, y1), min(px + p, x1)
                if sy1 <= sy0 or sx1 <= sx0:
                    continue
                image[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = found[0][
                    sy0 - py : sy1 - py, sx0 - px : sx1 - px
                ]
                if ids is not None:
                    ids[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = found[1][
                        sy0 - py : sy1 - py, sx0 - px : sx1 - px
                    ]
        return image, ids


def _render(canvas: _Canvas, scale: float, x0: int, y0: int, w: int, h: int, with_ids: bool, seed: int):
    """Slide level-0 pixels [y0, y0 + h) x [x0, x0 + w): image and ids resampled from the canvas."""
    import cv2

    rng = np.random.default_rng([seed, y0, x0])
    if scale == 1.0:
        return canvas.region(x0, y0, x0 + w, y0 + h, with_ids, rng)
    # level-0 pixel centre X + 0.5 sits at canvas coordinate (X + 0.5) * scale
    cx0 = int(math.floor(x0 * scale)) - 2
    cy0 = int(math.floor(y0 * scale)) - 2
    cx1 = int(math.ceil((x0 + w) * scale)) + 2
    cy1 = int(math.ceil((y0 + h) * scale)) + 2
    image, ids = canvas.region(cx0, cy0, cx1, cy1, with_ids, rng)
    if scale > 1.0:
        sigma = 0.5 * math.sqrt(scale * scale - 1.0)
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    matrix = np.array(
        [[scale, 0.0, (x0 + 0.5) * scale - 0.5 - cx0], [0.0, scale, (y0 + 0.5) * scale - 0.5 - cy0]]
    )
    out = cv2.warpAffine(
        image, matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )
    out_ids = None
    if ids is not None:
        # ids: sampled at four points of each slide pixel, (X + 1/4, X + 3/4) in both axes (the
        # 2x2 canvas pixels it covers at 20x); the most frequent nucleus when at least two
        # samples hit nuclei. Symmetric: a single centre sample would shift the truth by a
        # quarter of a pixel at 20x, where a slide pixel's centre falls between canvas pixels.
        def index(start, count, offset, limit, origin):
            return np.clip(
                np.floor((np.arange(start, start + count) + offset) * scale).astype(np.int64) - origin,
                0,
                limit - 1,
            )

        samples = np.stack(
            [
                ids[
                    index(y0, h, oy, ids.shape[0], cy0)[:, None], index(x0, w, ox, ids.shape[1], cx0)[None, :]
                ]
                for oy in (0.25, 0.75)
                for ox in (0.25, 0.75)
            ]
        )
        votes = (samples[:, None] == samples[None, :]).sum(axis=1) * (samples > 0)
        best = np.take_along_axis(samples, votes.argmax(axis=0)[None], axis=0)[0]
        out_ids = np.where((samples > 0).sum(axis=0) >= 2, best, 0).astype(np.uint32)
    return out, out_ids


def _jpeg(tile: np.ndarray, quality: int) -> bytes:
    import cv2

    if tile.shape[0] != TILE or tile.shape[1] != TILE:
        padded = np.full((TILE, TILE, 3), 255, dtype=np.uint8)
        padded[: tile.shape[0], : tile.shape[1]] = tile
        tile = padded
    ok, buf = cv2.imencode(".jpg", tile[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _aperio_description(width: int, height: int, mpp: float, quality: int) -> str:
    mag = 40 if mpp < 0.375 else 20 if mpp < 0.75 else 10
    return (
        f"Aperio Image Library v12.0.0 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE}) "
        f"JPEG/RGB Q={quality}|AppMag = {mag}|MPP = {mpp:.6g}|Generator = pannuke-hf make-synthetic-slide"
    )


def make_synthetic_slide(
    out: str | os.PathLike,
    width: int,
    height: int,
    mpp: float = 0.25,
    seed: int = 0,
    tissue_fraction: float = 0.6,
    touching: float = 0.6,
    truth: bool = True,
    quality: int = 90,
    workers: int | None = None,
    bank_size: int = 64,
) -> dict[str, object]:
    """Write a generated pyramidal slide (and its truth); see the module docstring.

    Args:
        out: the ``.tiff`` to write (truth files beside it: ``<stem>_truth.tiff``, ``<stem>_truth.parquet``).
        width, height: level-0 size in pixels.
        mpp: µm per level-0 pixel written in the metadata (the content is resampled to it).
        seed: seed of the patches and their placement.
        tissue_fraction: share of the slide covered by tissue (at most ~0.93).
        touching: probability of touching same-class pairs (see the patch generator).
        truth: also write the true nuclei.
        quality: JPEG quality of the tiles.
        workers: threads that render and encode (default: the CPU count).
        bank_size: distinct patches generated (placed many times, rotated).

    Returns:
        ``{"slide", "truth_tiff", "truth_table", "nuclei", "tissue_patches", "levels"}``.
    """
    import tifffile

    if width < 1 or height < 1:
        raise ValueError(f"the slide size must be positive, got {width}x{height}")
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = mpp / CANVAS_MPP
    if abs(scale - 1.0) < 1e-9:
        scale = 1.0
    canvas_w, canvas_h = math.ceil(width * scale) + 4, math.ceil(height * scale) + 4
    canvas = _Canvas(canvas_w, canvas_h, seed, bank_size, tissue_fraction, touching)
    workers = workers or os.cpu_count() or 2
    band = TILE * 4  # level-0 rows rendered per job (a multiple of 4 for the next level)
    chunk = TILE * 16  # level-0 columns per job

    levels = [(width, height)]
    while max(levels[-1]) > 1024:
        w, h = levels[-1]
        levels.append((max(1, w // 4), max(1, h // 4)))
    tmp = tempfile.TemporaryDirectory(prefix="synthetic-slide-", dir=out.parent)
    memmaps = [
        np.lib.format.open_memmap(
            os.path.join(tmp.name, f"level{k}.npy"), mode="w+", dtype=np.uint8, shape=(h, w, 3)
        )
        for k, (w, h) in enumerate(levels)
        if k > 0
    ]
    truth_ids: dict[int, int] = {}
    truth_queue: queue.Queue = queue.Queue(maxsize=8)

    def job(y0: int, x0: int):
        import cv2

        h, w = min(band, height - y0), min(chunk, width - x0)
        image, ids = _render(canvas, scale, x0, y0, w, h, truth, seed)
        tiles = [
            [_jpeg(image[ty : ty + TILE, tx : tx + TILE], quality) for tx in range(0, w, TILE)]
            for ty in range(0, h, TILE)
        ]
        small = None
        if memmaps:
            sh, sw = levels[1][1], levels[1][0]
            y1s, x1s = min(sh, (y0 + h) // 4), min(sw, (x0 + w) // 4)
            if y1s > y0 // 4 and x1s > x0 // 4:
                small = cv2.resize(
                    image[: (y1s - y0 // 4) * 4, : (x1s - x0 // 4) * 4],
                    (x1s - x0 // 4, y1s - y0 // 4),
                    interpolation=cv2.INTER_AREA,
                )
        return tiles, small, ids

    def level0_tiles(pool: ThreadPoolExecutor) -> Iterator[bytes]:
        for y0 in range(0, height, band):
            futures = [pool.submit(job, y0, x0) for x0 in range(0, width, chunk)]
            results = [f.result() for f in futures]
            # side effects before the yields: tifffile stops pulling after the last tile
            for (_, small, ids), x0 in zip(results, range(0, width, chunk)):
                if small is not None:
                    memmaps[0][y0 // 4 : y0 // 4 + small.shape[0], x0 // 4 : x0 // 4 + small.shape[1]] = small
                if ids is not None:
                    present = np.unique(ids)
                    for gid in present[present > 0].tolist():
                        if gid not in truth_ids:
                            truth_ids[gid] = _label_of(canvas, gid)
            if truth:
                truth_queue.put([(ids, x0) for (_, _, ids), x0 in zip(results, range(0, width, chunk))])
            rows = len(results[0][0])
            for r in range(rows):
                for tiles, _, _ in results:
                    yield from tiles[r]

    def level_tiles(pool: ThreadPoolExecutor, k: int) -> Iterator[bytes]:
        import cv2

        src = memmaps[k - 1]
        w, h = levels[k]
        nxt = memmaps[k] if k < len(memmaps) else None
        for ty in range(0, h, TILE):
            rows = np.array(src[ty : ty + TILE])
            encoded = pool.map(
                lambda tx, rows=rows: _jpeg(rows[:, tx : tx + TILE], quality), range(0, w, TILE)
            )
            if nxt is not None:
                nw, nh = levels[k + 1]
                y1 = min(nh, (ty + rows.shape[0]) // 4)
                if y1 > ty // 4:
                    nxt[ty // 4 : y1] = cv2.resize(
                        rows[: (y1 - ty // 4) * 4, : nw * 4], (nw, y1 - ty // 4), interpolation=cv2.INTER_AREA
                    )
            yield from encoded

    truth_path = out.with_name(out.stem + "_truth.tiff")
    truth_thread = None
    if truth:

        def truth_tiles() -> Iterator[np.ndarray]:
            while True:
                item = truth_queue.get()
                if item is None:
                    return
                h = item[0][0].shape[0]
                for ty in range(0, h, TILE):
                    for ids, _ in item:
                        for tx in range(0, ids.shape[1], TILE):
                            t = np.zeros((TILE, TILE), dtype=np.uint32)
                            part = ids[ty : ty + TILE, tx : tx + TILE]
                            t[: part.shape[0], : part.shape[1]] = part
                            yield t

        def write_truth() -> None:
            with tifffile.TiffWriter(truth_path, bigtiff=True) as tw:
                tw.write(
                    truth_tiles(),
                    shape=(height, width),
                    dtype=np.uint32,
                    tile=(TILE, TILE),
                    compression="zlib",
                    metadata=None,
                )

        truth_thread = threading.Thread(target=write_truth, daemon=True)
        truth_thread.start()

    partial = out.with_name(out.name + ".partial")
    try:
        with ThreadPoolExecutor(workers) as pool, tifffile.TiffWriter(partial, bigtiff=True) as tw:
            common = dict(
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                metadata=None,
            )
            tw.write(
                level0_tiles(pool),
                shape=(height, width, 3),
                description=_aperio_description(width, height, mpp, quality),
                **common,
            )
            truth_queue.put(None)
            for k in range(1, len(levels)):
                w, h = levels[k]
                tw.write(
                    level_tiles(pool, k),
                    shape=(h, w, 3),
                    subfiletype=1,
                    description=f"level {k}: {w}x{h}",
                    **common,
                )
        if truth_thread is not None:
            truth_thread.join()
        os.replace(partial, out)
    finally:
        memmaps.clear()  # the memmaps close before their folder goes
        tmp.cleanup()
        if partial.exists():
            partial.unlink()
    result: dict[str, object] = {
        "slide": str(out),
        "levels": levels,
        "tissue_patches": int(canvas.tissue.sum()),
    }
    if truth:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..constants import CLASS_NAMES

        ids = np.array(sorted(truth_ids), dtype=np.int64)
        labels = np.array([truth_ids[i] for i in ids.tolist()], dtype=np.int16)
        table = pa.table({"id": ids, "label_id": labels, "class": [CLASS_NAMES[v] for v in labels.tolist()]})
        pq.write_table(table, out.with_name(out.stem + "_truth.parquet"))
        result.update(
            truth_tiff=str(truth_path),
            truth_table=str(out.with_name(out.stem + "_truth.parquet")),
            nuclei=len(ids),
        )
    return result


def _label_of(canvas: _Canvas, gid: int) -> int:
    """Class (1-5) of a global nucleus id."""
    patch, local = divmod(gid, _ID_STRIDE)
    row, col = divmod(patch, canvas.cols + 1)
    b = int(canvas.choice[row, col])
    return int(canvas.classes[b][local])


def read_truth_region(path: str | os.PathLike, x: int, y: int, width: int, height: int) -> np.ndarray:
    """uint32 true ids of level-0 pixels [y, y + height) x [x, x + width) from ``<stem>_truth.tiff`` (0 outside)."""
    import tifffile

    out = np.zeros((height, width), dtype=np.uint32)
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        H, W = page.shape[:2]
        th, tw = page.tilelength, page.tilewidth
        per_row = -(-W // tw)
        fh = tf.filehandle
        for ty in range(max(y, 0) // th, -(-min(y + height, H) // th)):
            for tx in range(max(x, 0) // tw, -(-min(x + width, W) // tw)):
                index = ty * per_row + tx
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
                tile = np.asarray(page.decode(data, index)[0]).reshape(th, tw)
                gy, gx = ty * th, tx * tw
                sy0, sx0, sy1, sx1 = (
                    max(y, gy),
                    max(x, gx),
                    min(y + height, gy + th, H),
                    min(x + width, gx + tw, W),
                )
                if sy1 > sy0 and sx1 > sx0:
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[sy0 - gy : sy1 - gy, sx0 - gx : sx1 - gx]
    return out
