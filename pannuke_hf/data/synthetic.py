"""Generated PanNuke-like folds in the exact raw release format, for demos and tests.

:func:`make_synthetic_folds` writes, for each fold ``k``::

    Fold k/images/foldk/images.npy   (N, 256, 256, 3) float64, RGB 0.0-255.0 (integer values)
    Fold k/images/foldk/types.npy    (N,) numpy unicode strings, tissue names from TISSUES
    Fold k/masks/foldk/masks.npy     (N, 256, 256, 6) float64, channels as RAW_CHANNELS
    Fold k/README.txt                a note saying the data is generated

or, with ``as_zip=True``, one ``fold_k.zip`` per fold that unpacks to the same ``Fold k/`` tree.

Mask semantics are those of the release: channels 0-4 hold instance ids of one nucleus class
(0 = not this class), channel 5 is 1 on background and 0 on nucleus pixels. Ids are not
consecutive, mostly above 255, and in every nucleated patch the first nucleus of each class
present carries an exact multiple of 256 (256, 512, ...), the ids a uint8 cast would lose.

Quirks of the real release, placed deterministically at fixed patch indices of EVERY fold (a
fold with fewer patches simply lacks the later ones); :data:`QUIRK_PATCHES` holds this table and
:func:`quirk_indices` returns it for a given fold size:

=====  ===============  =====================================================================
index  quirk            what the patch holds
=====  ===============  =====================================================================
0      ``all_classes``  an ordinary patch with nuclei of all five classes
1      ``empty``        no nucleus at all: channels 0-4 are 0, channel 5 is 1 everywhere
2      ``void``         all six channels 0 everywhere (neither a class nor background); the
                        image still shows nuclei
3      ``overlap``      an extra epithelial nucleus (channel 4) overlapping the neoplastic
                        nucleus (channel 0) of the top-left cell: the shared pixels are non-zero
                        in both channels (the only patch with such pixels)
4      ``split_id``     the neoplastic nuclei of the top-left and bottom-right cells share one
                        id: one (channel 0, id) nucleus in two disconnected pieces
>= 5   (none)           ordinary patches
=====  ===============  =====================================================================

Patches 0, 3 and 4 hold nuclei of all five classes; apart from the split id, an id appears once
per class channel of a patch (the same value may recur in another channel).

Every patch is drawn from its own generator seeded with ``(seed, fold, index)``, so a patch
does not depend on the fold size: the first patches of a 5-patch and a 1000-patch fold are equal.

Appearance: nuclei sit one per cell of an 8x8 grid of 32-pixel cells (never touching across
cells) on a pink, eosin-like background, and each class is drawn distinct in size, shape and
stain so that a small segmentation model can learn them:

* neoplastic: large (radius ~9-11 px), irregular outline, dark purple, coarse chromatin;
* inflammatory: small round (radius ~5.5-6.5 px), very dark blue;
* connective: elongated spindle (~11 x 3 px, any orientation), magenta;
* dead: tiny round (radius ~4-4.8 px), near-black brown-red;
* epithelial: medium oval (~7 x 5 px), pale blue-lilac.

Touching nuclei (``touching > 0``; off by default, and the default output is unchanged): in every
ordinary patch, each 2x2 block of cells holds, with probability ``touching``, one touching pair:
its top-left cell and its right (or, with even odds, lower) neighbour get nuclei of one class,
pushed against their shared cell border (each centre at 0.7 of its half-extent from the border)
so that both are cut by the border and touch along it. About ``touching / 2`` of the nuclei then
touch a same-class neighbour: one connected blob of one class in the semantic map, two nuclei
in the instance map.
"""

from __future__ import annotations

import pathlib
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ..constants import (
    BACKGROUND_CHANNEL,
    FOLDS,
    NUM_NUCLEUS_CHANNELS,
    NUM_RAW_CHANNELS,
    PATCH_SIZE,
    TISSUES,
    fold_dir_name,
    raw_relpaths,
)

__all__ = [
    "QUIRK_PATCHES",
    "make_synthetic_folds",
    "make_synthetic_patch",
    "quirk_indices",
]

#: Patch index (in every fold) -> quirk it carries. See the module docstring.
QUIRK_PATCHES: dict[int, str] = {
    0: "all_classes",
    1: "empty",
    2: "void",
    3: "overlap",
    4: "split_id",
}

#: Side of the square grid cells that each hold at most one nucleus.
_CELL = 32
_GRID = PATCH_SIZE // _CELL
#: Largest id drawn (the release's ids go up to ~3517).
_MAX_ID = 3999
#: Patches generated and written per chunk: bounds memory for big folds.
_CHUNK = 64


@dataclass(frozen=True)
class _ClassLook:
    """How one nucleus class is drawn: semi-axes ranges (pixels), outline and stain."""

    major: tuple[float, float]  # semi-axis along the nucleus' orientation
    aspect: tuple[float, float]  # minor / major semi-axis
    wobble: float  # relative amplitude of the irregular outline
    rgb: tuple[float, float, float]  # mean stain colour
    texture: float  # per-pixel chromatin noise (std, 0-255 scale)


#: Indexed by raw channel 0-4 (neoplastic, inflammatory, connective, dead, epithelial).
_LOOKS: tuple[_ClassLook, ...] = (
    _ClassLook(major=(9.0, 11.0), aspect=(0.8, 1.0), wobble=0.12, rgb=(95.0, 35.0, 120.0), texture=14.0),
    _ClassLook(major=(5.5, 6.5), aspect=(0.9, 1.0), wobble=0.0, rgb=(35.0, 30.0, 100.0), texture=5.0),
    _ClassLook(major=(10.0, 12.0), aspect=(0.22, 0.3), wobble=0.0, rgb=(165.0, 55.0, 150.0), texture=6.0),
    _ClassLook(major=(4.0, 4.8), aspect=(0.85, 1.0), wobble=0.0, rgb=(55.0, 15.0, 25.0), texture=4.0),
    _ClassLook(major=(6.5, 8.0), aspect=(0.6, 0.75), wobble=0.0, rgb=(125.0, 130.0, 210.0), texture=6.0),
)
#: Eosin-pink tissue background (mean RGB).
_BACKGROUND_RGB = np.array([232.0, 168.0, 200.0])


def quirk_indices(num_patches: int) -> dict[str, list[int]]:
    """The quirk placement of a generated fold with ``num_patches`` patches.

    Returns a dict quirk name -> list of patch indices carrying it (empty list when the fold
    is too small to hold it), e.g. ``{"empty": [1], "void": [2], ...}``.
    """
    return {name: [i] if i < num_patches else [] for i, name in QUIRK_PATCHES.items()}


def _bilinear_taps(coarse: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left node, right node and weight of the right node for linear upsampling to ``size``."""
    coords = np.linspace(0, coarse - 1, size)
    left = np.minimum(np.floor(coords).astype(np.int64), coarse - 2)
    return left, left + 1, coords - left


_SMOOTH_COARSE = 9
_TAPS = _bilinear_taps(_SMOOTH_COARSE, PATCH_SIZE)


def _smooth_field(rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [-1, 1] of shape (256, 256): bilinear upsampling of noise.

    Done by gathering, not matrix products: BLAS threads cost more than they save here.
    """
    grid = rng.uniform(-1.0, 1.0, size=(_SMOOTH_COARSE, _SMOOTH_COARSE))
    left, right, weight = _TAPS
    rows = grid[left] * (1.0 - weight[:, None]) + grid[right] * weight[:, None]  # (256, coarse)
    return rows[:, left] * (1.0 - weight) + rows[:, right] * weight


def _draw_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct, non-consecutive ids in 1.._MAX_ID; the first is a multiple of 256."""
    ids = rng.choice(_MAX_ID, size=count, replace=False) + 1
    if count:
        multiple = 256 * int(rng.integers(1, _MAX_ID // 256 + 1))
        where = np.flatnonzero(ids == multiple)
        if where.size:  # already drawn: move it to the front
            ids[where[0]] = ids[0]
        ids[0] = multiple
    return ids.astype(np.int64)


#: Fraction of its half-extent at which a nucleus of a touching pair sits from the shared border.
_TOUCH_DEPTH = 0.7


def _touching_pairs(rng: np.random.Generator, touching: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells ``(first, second)`` of the touching pairs of a patch, and whether each pair is vertical."""
    rows, cols = np.meshgrid(np.arange(0, _GRID, 2), np.arange(0, _GRID, 2), indexing="ij")
    first = (rows * _GRID + cols).ravel()  # top-left cell of each 2x2 block
    chosen = rng.random(first.size) < touching
    vertical = rng.random(first.size) < 0.5
    first, vertical = first[chosen], vertical[chosen]
    return first, first + np.where(vertical, _GRID, 1), vertical


def _layout(rng: np.random.Generator, quirk: str | None, touching: float = 0.0) -> dict[str, np.ndarray]:
    """Per-cell nucleus parameters of one patch, each an array of shape (_GRID * _GRID,).

    ``cls`` is the raw channel of the cell's nucleus, or -1 for an empty cell. With ``touching``
    (ordinary patches only) some neighbouring cells hold touching pairs (module docstring).
    """
    n_cells = _GRID * _GRID
    occupancy = rng.uniform(0.55, 0.95)
    occupied = rng.random(n_cells) < occupancy
    class_weights = rng.dirichlet(np.full(NUM_NUCLEUS_CHANNELS, 2.0))
    cls = np.where(occupied, rng.choice(NUM_NUCLEUS_CHANNELS, size=n_cells, p=class_weights), -1)
    if quirk in ("all_classes", "overlap", "split_id"):
        # Guarantee every class (the overlap needs two classes, the split id two neoplastic
        # nuclei): the first cells in raster order get classes 0..4.
        cls[:NUM_NUCLEUS_CHANNELS] = np.arange(NUM_NUCLEUS_CHANNELS)
    if quirk == "split_id":
        cls[n_cells - 1] = 0  # far from cell 0, so the two pieces are disconnected
    pairs = None
    if touching > 0 and quirk is None:
        pairs = _touching_pairs(rng, touching)
        first, second, _ = pairs
        shared = np.where(cls[first] >= 0, cls[first], rng.choice(NUM_NUCLEUS_CHANNELS, size=first.size))
        cls[first] = cls[second] = shared
    looks_major = np.array([look.major for look in _LOOKS])  # (5, 2)
    looks_aspect = np.array([look.aspect for look in _LOOKS])
    k = np.maximum(cls, 0)
    major = rng.uniform(looks_major[k, 0], looks_major[k, 1])
    minor = major * rng.uniform(looks_aspect[k, 0], looks_aspect[k, 1])
    wobble = np.array([look.wobble for look in _LOOKS])[k]
    extent = major * (1.0 + wobble)
    # Centre jitter keeps every nucleus >= 2 px inside its cell: cells never touch.
    slack = np.maximum(_CELL / 2 - extent - 2.0, 0.0)
    layout = {
        "cls": cls,
        "cy": _CELL / 2 + rng.uniform(-slack, slack),
        "cx": _CELL / 2 + rng.uniform(-slack, slack),
        "major": major,
        "minor": minor,
        "theta": rng.uniform(0.0, np.pi, n_cells),
        "wobble": wobble,
        "lobes": rng.integers(3, 6, n_cells).astype(np.float64),
        "phase": rng.uniform(0.0, 2 * np.pi, n_cells),
        "shade": rng.uniform(0.9, 1.1, n_cells),
    }
    if pairs is not None:
        _push_together(rng, layout, *pairs, slack)
    return layout


def _push_together(
    rng: np.random.Generator,
    p: dict[str, np.ndarray],
    first: np.ndarray,
    second: np.ndarray,
    vertical: np.ndarray,
    slack: np.ndarray,
) -> None:
    """Move the nuclei of each pair against their shared cell border (in place).

    Each centre sits ``_TOUCH_DEPTH`` of the nucleus's half-extent along the pair's axis from the
    border, so both are cut by it and touch along it; both share one jittered coordinate across.
    """
    cos, sin = np.cos(p["theta"]), np.sin(p["theta"])
    half_x = np.hypot(p["major"] * cos, p["minor"] * sin)  # half-extent of the ellipse along x
    half_y = np.hypot(p["major"] * sin, p["minor"] * cos)
    across = np.minimum(slack[first], slack[second])
    shared = _CELL / 2 + rng.uniform(-across, across)
    for is_vertical, axis, cross, half in ((False, "cx", "cy", half_x), (True, "cy", "cx", half_y)):
        which = vertical == is_vertical
        a, b = first[which], second[which]
        p[axis][a] = _CELL - _TOUCH_DEPTH * half[a]  # against the right (lower) border of its cell
        p[axis][b] = _TOUCH_DEPTH * half[b]  # against the left (upper) border of the next cell
        p[cross][a] = p[cross][b] = shared[which]


def _cell_coordinates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel cell index and coordinates inside the cell, each (PATCH_SIZE, PATCH_SIZE)."""
    yy, xx = np.mgrid[0:PATCH_SIZE, 0:PATCH_SIZE]
    cell = (yy // _CELL) * _GRID + xx // _CELL
    # float32: the geometry needs no more, and it halves the cost of the per-pixel maths.
    return cell, (yy % _CELL).astype(np.float32), (xx % _CELL).astype(np.float32)


_CELL_INDEX, _LOCAL_Y, _LOCAL_X = _cell_coordinates()


def _inside(dy: np.ndarray, dx: np.ndarray, p: Mapping[str, np.ndarray]) -> np.ndarray:
    """Whether offsets (dy, dx) from a nucleus centre fall inside it (arrays broadcast)."""
    cos, sin = np.cos(p["theta"]), np.sin(p["theta"])
    u = (dx * cos + dy * sin) / p["major"]
    v = (-dx * sin + dy * cos) / p["minor"]
    radius = 1.0 + p["wobble"] * np.cos(p["lobes"] * np.arctan2(v, u) + p["phase"])
    return u * u + v * v <= radius * radius


_STAIN_RGB = np.array([look.rgb for look in _LOOKS])  # (5, 3)
_STAIN_TEXTURE = np.array([look.texture for look in _LOOKS])  # (5,)


def _paint(
    image: np.ndarray, pixels: np.ndarray, channels: np.ndarray, shade: np.ndarray, rng: np.random.Generator
) -> None:
    """Stain nucleus pixels of ``image`` (H, W, 3).

    ``pixels`` (P,) are flat pixel indices, ``channels`` (P,) the raw class channel of each and
    ``shade`` (P,) a per-nucleus intensity factor around 1.
    """
    chromatin = rng.standard_normal(pixels.size) * _STAIN_TEXTURE[channels]
    rows, cols = np.divmod(pixels, image.shape[1])
    image[rows, cols] = _STAIN_RGB[channels] * shade[:, None] + chromatin[:, None]


def make_synthetic_patch(
    seed: int, fold: int, index: int, quirks: bool = True, touching: float = 0.0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Generate one patch, deterministically from ``(seed, fold, index)``.

    Args:
        seed: global seed of the generated release.
        fold: fold number (1-3); only enters the seed.
        index: patch index in the fold; selects the quirk (see :data:`QUIRK_PATCHES`).
        quirks: place the quirks; ``False`` makes every patch an ordinary one.
        touching: probability of a touching same-class pair per 2x2 block of cells in ordinary
            patches (module docstring); 0 (default) gives the original patches.

    Returns:
        ``(image, masks, tissue)``: image (256, 256, 3) float64 0-255 with integer values,
        masks (256, 256, 6) float64 in the raw channel layout, tissue a name from TISSUES.
    """
    rng = np.random.default_rng([seed, fold, index])
    quirk = QUIRK_PATCHES.get(index) if quirks else None
    tissue = TISSUES[int(rng.integers(len(TISSUES)))]

    # Background: eosin pink with smooth stromal variation and pixel noise.
    field = _smooth_field(rng)
    image = _BACKGROUND_RGB * (1.0 + 0.06 * field[..., None])
    image += 6.0 * rng.standard_normal(size=image.shape, dtype=np.float32)

    masks = np.zeros((PATCH_SIZE, PATCH_SIZE, NUM_RAW_CHANNELS), dtype=np.float64)
    if quirk == "empty":
        masks[..., BACKGROUND_CHANNEL] = 1.0
        return _finish(image), masks, tissue

    p = _layout(rng, quirk, touching)
    cell_ids = np.zeros(_GRID * _GRID, dtype=np.int64)
    for channel in range(NUM_NUCLEUS_CHANNELS):
        cells_of_class = np.flatnonzero(p["cls"] == channel)
        cell_ids[cells_of_class] = _draw_ids(rng, cells_of_class.size)
        if quirk == "split_id" and channel == 0:
            cell_ids[cells_of_class[-1]] = cell_ids[cells_of_class[0]]  # same id, disconnected cells

    # Per-pixel copies of the cell parameters: the drawing is one vectorised pass per patch.
    cells = {key: value.astype(np.float32)[_CELL_INDEX] for key, value in p.items() if key != "cls"}
    cls = p["cls"][_CELL_INDEX]
    nucleus = (cls >= 0) & _inside(_LOCAL_Y - cells["cy"], _LOCAL_X - cells["cx"], cells)
    pixels = np.flatnonzero(nucleus)
    pixel_cls = cls.ravel()[pixels]
    masks.reshape(-1, NUM_RAW_CHANNELS)[pixels, pixel_cls] = cell_ids[_CELL_INDEX.ravel()[pixels]]
    _paint(image, pixels, pixel_cls, cells["shade"].ravel()[pixels], rng)

    if quirk == "overlap":
        _add_overlapping_nucleus(rng, p, image, masks)

    if quirk == "void":
        masks[...] = 0.0  # the whole patch: neither a class nor background
    else:
        masks[..., BACKGROUND_CHANNEL] = (masks[..., :NUM_NUCLEUS_CHANNELS] == 0).all(axis=-1)
    return _finish(image), masks, tissue


def _add_overlapping_nucleus(
    rng: np.random.Generator, p: Mapping[str, np.ndarray], image: np.ndarray, masks: np.ndarray
) -> None:
    """Add an epithelial nucleus overlapping the neoplastic one of cell 0 (the overlap quirk)."""
    host = {key: value[0] for key, value in p.items()}  # cell 0 holds a neoplastic nucleus
    extra = dict(host, major=4.0, minor=4.0, wobble=0.0, theta=0.0)
    # Centred near the host's left edge: part of it inside the host, part outside.
    extra["cx"] = host["cx"] - 0.8 * host["major"]
    yy, xx = np.mgrid[0:_CELL, 0:_CELL].astype(np.float64)
    where = np.zeros(masks.shape[:2], dtype=bool)
    where[:_CELL, :_CELL] = _inside(yy - extra["cy"], xx - extra["cx"], extra)
    channel = 4
    used = set(np.unique(masks[..., channel]).astype(np.int64).tolist())
    new_id = next(i for i in range(1001, _MAX_ID, 7) if i not in used)
    masks[..., channel][where] = new_id
    pixels = np.flatnonzero(where)
    _paint(image, pixels, np.full(pixels.size, channel), np.ones(pixels.size), rng)


def _finish(image: np.ndarray) -> np.ndarray:
    """Round and clip to the release's integer-valued float64 RGB."""
    return np.clip(np.rint(image), 0.0, 255.0)


def _normalise_sizes(patches_per_fold: int | Mapping[int, int], folds: Iterable[int]) -> dict[int, int]:
    """Turn the ``patches_per_fold`` argument into ``{fold: count}`` and check it."""
    folds = tuple(folds)
    for fold in folds:
        if fold not in FOLDS:
            raise ValueError(f"unknown fold {fold!r}: folds are {FOLDS}")
    if isinstance(patches_per_fold, Mapping):
        missing = [f for f in folds if f not in patches_per_fold]
        if missing:
            raise ValueError(f"patches_per_fold has no count for folds {missing}")
        sizes = {f: int(patches_per_fold[f]) for f in folds}
    else:
        sizes = {f: int(patches_per_fold) for f in folds}
    for fold, count in sizes.items():
        if count < 1:
            raise ValueError(f"fold {fold}: patches_per_fold must be >= 1, got {count}")
    return sizes


def _write_fold(
    root: pathlib.Path, fold: int, count: int, seed: int, quirks: bool, touching: float = 0.0
) -> None:
    """Write one fold's three arrays under ``root`` chunk by chunk (memory-mapped outputs)."""
    paths = {key: root / rel for key, rel in raw_relpaths(fold).items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    shape = (count, PATCH_SIZE, PATCH_SIZE)
    images = np.lib.format.open_memmap(paths["images"], mode="w+", dtype=np.float64, shape=(*shape, 3))
    masks = np.lib.format.open_memmap(
        paths["masks"], mode="w+", dtype=np.float64, shape=(*shape, NUM_RAW_CHANNELS)
    )
    tissues = []
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        for index in range(start, stop):
            images[index], masks[index], tissue = make_synthetic_patch(seed, fold, index, quirks, touching)
            tissues.append(tissue)
        images.flush()
        masks.flush()
    del images, masks  # closes the memory maps
    np.save(paths["types"], np.array(tissues, dtype=f"<U{max(len(t) for t in TISSUES)}"))
    (root / fold_dir_name(fold) / "README.txt").write_text(
        f"Generated PanNuke-like fold {fold} ({count} patches, seed {seed}) written by pannuke-hf.\n"
        "Not real data: for demos and tests only.\n"
    )


def _zip_fold(root: pathlib.Path, fold: int, zip_path: pathlib.Path) -> None:
    """Pack ``root/Fold k`` into ``zip_path`` with member names ``Fold k/...``."""
    fold_root = root / fold_dir_name(fold)
    tmp = zip_path.with_name(zip_path.name + ".partial")
    # Stored, not deflated: the arrays are large and writing them must stay fast.
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(fold_root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())
    tmp.replace(zip_path)


def make_synthetic_folds(
    out_dir: str | pathlib.Path,
    patches_per_fold: int | Mapping[int, int] = 8,
    seed: int = 0,
    as_zip: bool = False,
    folds: Iterable[int] = FOLDS,
    quirks: bool = True,
    touching: float = 0.0,
) -> pathlib.Path:
    """Write generated folds in the exact raw PanNuke layout.

    Args:
        out_dir: folder to write into (created if needed). Gets ``Fold k/...`` folders, or
            ``fold_k.zip`` files when ``as_zip`` is true.
        patches_per_fold: patches per fold, an int for every fold or a dict ``{fold: count}``.
        seed: seed of the whole generated release; patch ``i`` of fold ``k`` depends only on
            ``(seed, k, i)``.
        as_zip: write ``fold_k.zip`` files (each unpacking to ``Fold k/...``) instead of folders.
        folds: which folds to write.
        quirks: place the release's quirks at the indices of :data:`QUIRK_PATCHES`.
        touching: probability of a touching same-class pair per 2x2 block of cells (see the
            module docstring); 0 (default) writes the original data.

    Returns:
        ``out_dir`` as a path: the ``data_dir`` to give the dataset builder.

    Memory stays bounded for any fold size: arrays are written through memory maps, a chunk of
    patches at a time.
    """
    if not 0.0 <= touching <= 1.0:
        raise ValueError(f"touching must lie in [0, 1] (a probability), got {touching}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = _normalise_sizes(patches_per_fold, folds)
    for fold, count in sizes.items():
        if not as_zip:
            _write_fold(out, fold, count, seed, quirks, touching)
            continue
        staging = out / f".staging_fold_{fold}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _write_fold(staging, fold, count, seed, quirks, touching)
            _zip_fold(staging, fold, out / f"fold_{fold}.zip")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out
