"""Reading the raw PanNuke release: locating the folds, memory-mapping, validating, converting.

The raw release is three folds, each either an extracted ``Fold k/...`` folder or a
``fold_k.zip`` file (see :func:`pannuke_hf.constants.raw_relpaths`). A fold's arrays are opened
memory-mapped and read one patch at a time, so memory stays flat whatever the fold size.

Conversion of one patch (:func:`convert_patch`):

* ``image``: float 0-255 RGB -> uint8 (rounded to the nearest integer, exact halves to the even
  neighbour as numpy's ``rint``: 12.5 -> 12, 13.5 -> 14; 12.49 -> 12, 254.6 -> 255).
* ``semantic``: label ``(j + 1) % 6`` for class channel ``j`` (the reference project's values);
  where several class channels claim a pixel the later channel wins (as in the reference);
  a class channel always beats the background channel (channel 5 is derived from the class
  channels, so a contradiction is a defect of channel 5); pixels with no class and background 0
  ("void") get ``void_label`` (0 as in the reference, or e.g. 255 to ignore them).
* ``instance``: every (class channel, raw id) pair is one nucleus, numbered 1..K in the order
  (channel, raw id). Ids above 255, multiples of 256 and ids split into disconnected pieces are
  all kept as they are (one nucleus each). A pixel of the instance map carries the nucleus that
  won the semantic decision there, so ``semantic == instance_labels[instance - 1]`` wherever
  ``instance > 0``. A nucleus whose every pixel was overwritten by a later channel keeps its
  entry in the instance lists (nothing is dropped) but has no pixel in the map.

Everything that cannot be converted losslessly raises :class:`PanNukeDataError` naming the
file and, where it applies, the patch index.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..constants import (
    BACKGROUND_CHANNEL,
    FOLD_ZIP_NAMES,
    FOLDS,
    NUM_NUCLEUS_CHANNELS,
    NUM_RAW_CHANNELS,
    PATCH_SIZE,
    RAW_CHANNEL_TO_LABEL,
    TISSUES,
    fold_dir_name,
    raw_relpaths,
)

#: Largest raw instance id accepted: ids are stored as int32 in ``instance_raw_ids``.
MAX_RAW_ID: int = np.iinfo(np.int32).max
#: Largest number of nuclei per patch: the instance map is a 16-bit PNG.
MAX_INSTANCES: int = np.iinfo(np.uint16).max


class PanNukeDataError(ValueError):
    """Raw PanNuke data that cannot be read or converted; the message names the file (and patch)."""


# --------------------------------------------------------------------------------------------
# Locating folds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldFiles:
    """The three arrays of one fold.

    Attributes:
        fold: fold number (1-3).
        images: path of ``images.npy`` (N, 256, 256, 3).
        types: path of ``types.npy`` (N,) tissue strings.
        masks: path of ``masks.npy`` (N, 256, 256, 6).
    """

    fold: int
    images: Path
    types: Path
    masks: Path

    def __post_init__(self):
        # Accept str paths (they travel through gen_kwargs as str).
        for name in ("images", "types", "masks"):
            object.__setattr__(self, name, Path(getattr(self, name)))


def _fold_dir_candidates(data_dir: Path, fold: int) -> list[Path]:
    """Folders that may hold ``Fold k``: ``data_dir`` itself and its direct sub-folders."""
    name = fold_dir_name(fold)
    candidates = [data_dir / name]
    # Zips extracted one per folder (``unzip fold_1.zip -d fold_1``) put ``Fold k`` one level down.
    candidates += sorted(p / name for p in data_dir.iterdir() if p.is_dir() and p.name != name)
    return [c for c in candidates if c.is_dir()]


def find_fold_sources(data_dir: str | os.PathLike, folds: Iterable[int] = FOLDS) -> dict[int, Path]:
    """Find each fold under ``data_dir``, as an extracted folder or a zip.

    An extracted ``Fold k`` folder (directly under ``data_dir`` or one level down) is preferred
    over ``fold_k.zip`` (no extraction needed).

    Args:
        data_dir: folder holding ``Fold 1``..``Fold 3`` and/or ``fold_1.zip``..``fold_3.zip``.
        folds: the folds to find.

    Returns:
        fold -> path of the folder that *contains* ``Fold k`` (for folders) or of the zip file.

    Raises:
        PanNukeDataError: ``data_dir`` missing or a fold found in neither form.
    """
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise PanNukeDataError(f"PanNuke data_dir {str(data_dir)!r} does not exist or is not a folder")
    sources: dict[int, Path] = {}
    for fold in folds:
        dirs = _fold_dir_candidates(data_dir, fold)
        zip_path = data_dir / FOLD_ZIP_NAMES[fold]
        if dirs:
            sources[fold] = dirs[0].parent
        elif zip_path.is_file():
            sources[fold] = zip_path
        else:
            raise PanNukeDataError(
                f"PanNuke fold {fold} not found in {str(data_dir)!r}: expected a folder "
                f"{fold_dir_name(fold)!r} or a file {FOLD_ZIP_NAMES[fold]!r}"
            )
    return sources


def fold_files(root: str | os.PathLike, fold: int) -> FoldFiles:
    """The three array paths of ``fold`` under ``root`` (the folder containing ``Fold k``).

    Raises:
        PanNukeDataError: an array file is missing (named in the message).
    """
    root = Path(root)
    paths = {key: root / rel for key, rel in raw_relpaths(fold).items()}
    for path in paths.values():
        if not path.is_file():
            raise PanNukeDataError(f"PanNuke fold {fold}: missing file {str(path)!r}")
    return FoldFiles(fold=fold, **paths)


def source_fingerprint(sources: Mapping[int, Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of every raw file the folds are read from (npy files or zips).

    Any change of a raw file (replaced, rewritten, touched, moved) changes this list, which
    enters the builder's cache key.
    """
    files: list[Path] = []
    for fold, source in sorted(sources.items()):
        if source.is_file():
            files.append(source)
        else:
            ff = fold_files(source, fold)
            files += [ff.images, ff.types, ff.masks]
    out = []
    for path in files:
        st = path.stat()
        out.append((str(path.resolve()), st.st_size, st.st_mtime_ns))
    return out


def extract_fold_zip(zip_path: str | os.PathLike, fold: int, cache_dir: str | os.PathLike) -> Path:
    """Extract the three arrays of ``fold`` from ``zip_path`` into ``cache_dir``, once.

    The target folder is keyed by the zip's path, size and mtime, and is written atomically
    (extracted into a temporary folder, then renamed), so an interrupted extraction is never
    mistaken for a finished one.

    Args:
        zip_path: ``fold_k.zip`` (unpacking to ``Fold k/...``).
        fold: the fold number it holds.
        cache_dir: folder for extracted folds.

    Returns:
        The folder containing ``Fold k`` (pass it to :func:`fold_files`).

    Raises:
        PanNukeDataError: the zip is corrupt or lacks one of the arrays (named in the message).
    """
    zip_path = Path(zip_path)
    st = zip_path.stat()
    key = hashlib.sha256(f"{zip_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    target = cache_dir / f"fold_{fold}-{key}"
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".fold_{fold}-{key}-", dir=cache_dir))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = _zip_members(zf, zip_path, fold)
                for rel, member in members.items():
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=16 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            raise PanNukeDataError(f"corrupt zip file {str(zip_path)!r}: {err}") from err
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same extraction first: use its result.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _zip_members(zf: zipfile.ZipFile, zip_path: Path, fold: int) -> dict[str, str]:
    """Map each array's relative path (``Fold k/...``) to its member name in the zip."""
    names = [n for n in zf.namelist() if not n.endswith("/")]
    members = {}
    for rel in raw_relpaths(fold).values():
        # Exact path, or the same path below one extra top folder.
        matches = [n for n in names if n == rel or n.endswith("/" + rel)]
        if not matches:
            raise PanNukeDataError(f"zip file {str(zip_path)!r} does not contain {rel!r}")
        members[rel] = min(matches, key=len)
    return members


# --------------------------------------------------------------------------------------------
# Opening and validating a fold
# --------------------------------------------------------------------------------------------


def _open_npy(path: Path) -> np.ndarray:
    """Memory-map a ``.npy`` file read-only (never reads the data)."""
    try:
        # open_memmap, not np.load(mmap_mode=...): the latter is patched by `datasets` for
        # streaming inside builder modules and then cannot memory-map.
        return np.lib.format.open_memmap(path, mode="r")
    except Exception as err:  # bad magic, bad header, truncated data, object arrays ...
        raise PanNukeDataError(f"{str(path)!r} is not a readable .npy array: {err}") from err


def _check_numeric(path: Path, arr: np.ndarray, what: str) -> None:
    # Integer and floating arrays convert losslessly after the per-patch range / integrality
    # checks; anything else (bool, complex, strings, objects) is not PanNuke data.
    if arr.dtype.kind not in "fiu":
        raise PanNukeDataError(
            f"{str(path)!r}: {what} must hold numbers (float64 in the release), got dtype {arr.dtype}"
        )


def _check_shape(path: Path, arr: np.ndarray, tail: tuple[int, ...], what: str) -> None:
    if arr.ndim != 1 + len(tail) or tuple(arr.shape[1:]) != tail:
        expected = "(N, " + ", ".join(map(str, tail)) + ")"
        raise PanNukeDataError(f"{str(path)!r}: {what} must have shape {expected}, got {tuple(arr.shape)}")


def read_types(path: Path) -> list[str]:
    """Load and validate ``types.npy`` (small: one string per patch).

    Returns:
        The tissue string of each patch.

    Raises:
        PanNukeDataError: unreadable file, wrong shape/dtype, or an unknown tissue (with index).
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise PanNukeDataError(f"{str(path)!r} is not a readable .npy array of strings: {err}") from err
    if arr.dtype.kind not in "US":
        raise PanNukeDataError(f"{str(path)!r}: tissue types must be strings, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise PanNukeDataError(f"{str(path)!r}: tissue types must have shape (N,), got {tuple(arr.shape)}")
    types = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in arr.tolist()]
    known = set(TISSUES)
    for index, tissue in enumerate(types):
        if tissue not in known:
            raise PanNukeDataError(
                f"{str(path)!r}: patch {index}: unknown tissue {tissue!r} (expected one of {', '.join(TISSUES)})"
            )
    return types


@dataclass
class RawFold:
    """A fold opened for reading: memory-mapped arrays plus the tissue strings.

    Attributes:
        files: the fold's paths.
        images: memmap (N, 256, 256, 3), numeric.
        masks: memmap (N, 256, 256, 6), numeric.
        types: N tissue strings.
    """

    files: FoldFiles
    images: np.ndarray
    masks: np.ndarray
    types: list[str]

    def __len__(self) -> int:
        return len(self.types)


def open_fold(files: FoldFiles) -> RawFold:
    """Open a fold memory-mapped and validate everything that can be checked without reading it.

    Raises:
        PanNukeDataError: corrupt npy, wrong ndim/shape/dtype, unknown tissue, or different
            numbers of images, masks and types (all files named).
    """
    images = _open_npy(files.images)
    _check_numeric(files.images, images, "images")
    _check_shape(files.images, images, (PATCH_SIZE, PATCH_SIZE, 3), "images")
    masks = _open_npy(files.masks)
    _check_numeric(files.masks, masks, "masks")
    _check_shape(files.masks, masks, (PATCH_SIZE, PATCH_SIZE, NUM_RAW_CHANNELS), "masks")
    types = read_types(files.types)
    counts = {files.images: len(images), files.masks: len(masks), files.types: len(types)}
    if len(set(counts.values())) != 1:
        detail = ", ".join(f"{str(p)!r}: {n}" for p, n in counts.items())
        raise PanNukeDataError(f"PanNuke fold {files.fold}: different numbers of patches ({detail})")
    return RawFold(files=files, images=images, masks=masks, types=types)


def fold_length(files: FoldFiles) -> int:
    """Number of patches of a fold, from the ``images.npy`` header alone."""
    return len(_open_npy(files.images))


# --------------------------------------------------------------------------------------------
# Per-patch validation and conversion
# --------------------------------------------------------------------------------------------


@dataclass
class Patch:
    """One converted patch.

    Attributes:
        image: (256, 256, 3) uint8 RGB.
        semantic: (256, 256) uint8 label map (values of ``constants.CLASS_NAMES``, or void_label).
        instance: (256, 256) uint16, 0 = no nucleus, k = nucleus k (1..K).
        instance_labels: K semantic labels (1-5), of nucleus k at position k-1.
        instance_raw_ids: K raw ids, of nucleus k in its class channel.
    """

    image: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    instance_labels: list[int]
    instance_raw_ids: list[int]


def _where(path: Path, index: int) -> str:
    return f"{str(path)!r}: patch {index}"


def convert_image(raw: np.ndarray, path: Path, index: int) -> np.ndarray:
    """Validate one raw image (256, 256, 3), numeric 0-255, and return it as uint8.

    Raises:
        PanNukeDataError: NaN/inf or values outside 0-255 (file and patch index named).
    """
    if raw.dtype.kind == "f":
        arr = np.asarray(raw, dtype=np.float64)
        # Fast path: min and max are NaN when any value is, so one comparison covers NaN, inf
        # and the range; only a failing patch takes the slower pass that names the defect.
        lo, hi = arr.min(), arr.max()
        if 0 <= lo and hi <= 255:
            rounded = np.rint(arr, out=_workspace().buffer("rint", arr.shape, np.float64))
            return rounded.astype(np.uint8)
        if not np.isfinite(arr).all():
            raise PanNukeDataError(f"{_where(path, index)}: image holds NaN or infinite values")
    else:
        arr = np.asarray(raw)
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 255:
        raise PanNukeDataError(f"{_where(path, index)}: image values must lie in 0-255, found {lo} to {hi}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return np.rint(arr).astype(np.uint8)


def _check_mask(raw: np.ndarray, path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one raw mask (256, 256, 6); return (ids (5, H, W) int64, background (H, W) bool)."""
    where = _where(path, index)
    chw = np.asarray(raw).transpose(2, 0, 1)  # (6, H, W) view
    # One pass to contiguous int64; for floats, a value that does not survive the cast exactly
    # is NaN, infinite or fractional.
    with np.errstate(invalid="ignore"):
        as_int = chw.astype(np.int64, order="C")
    if chw.dtype.kind == "f":
        inexact = (as_int != chw).any(axis=(1, 2))
        if inexact.any():
            c = int(np.flatnonzero(inexact)[0])
            if np.isnan(chw[c]).any():
                what = "NaN"
            elif np.isinf(chw[c]).any():
                what = "infinite values"
            else:
                what = "fractional values (ids must be whole)"
            raise PanNukeDataError(f"{where}: mask channel {c} holds {what}")
    ids = as_int[:NUM_NUCLEUS_CHANNELS]
    lows = ids.min(axis=(1, 2))
    if (lows < 0).any():
        c = int(np.flatnonzero(lows < 0)[0])
        raise PanNukeDataError(f"{where}: mask channel {c} holds negative instance ids ({lows[c]})")
    high = ids.max()
    if high > MAX_RAW_ID:
        raise PanNukeDataError(f"{where}: mask holds instance ids above {MAX_RAW_ID} ({high})")
    bg = as_int[BACKGROUND_CHANNEL]
    binary = (bg == 0) | (bg == 1)
    if not binary.all():
        bad = np.unique(chw[BACKGROUND_CHANNEL][~binary])[:5].tolist()
        raise PanNukeDataError(
            f"{where}: background channel {BACKGROUND_CHANNEL} must hold only 0 and 1, found {bad}"
        )
    return ids, bg == 1


def convert_mask(
    raw: np.ndarray, path: Path, index: int, void_label: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Validate one raw mask (256, 256, 6) and build its semantic and instance maps.

    Args:
        raw: the raw mask of one patch (any numeric dtype; float64 in the release).
        path: the masks file, for error messages.
        index: the patch index, for error messages.
        void_label: label of pixels with no class and background 0.

    Returns:
        ``(semantic (H, W) uint8, instance (H, W) uint16, instance_labels, instance_raw_ids)``;
        see the module docstring for the rules.

    Raises:
        PanNukeDataError: NaN, negative or fractional ids, background not 0/1, too many nuclei.
    """
    fast = _convert_mask_fast(raw, void_label)
    if fast is not None:
        return fast
    return _convert_mask_general(raw, path, index, void_label)


#: Largest raw id the fast path handles (its lookup tables have 6 * (largest id + 1) entries).
_FAST_MAX_ID: int = 1 << 16


class _Workspace:
    """Scratch arrays reused from patch to patch (one set per thread).

    Conversion needs several megabyte-sized temporaries per patch. Fresh ones cost a page fault
    per 4 KiB every time (the allocator hands large blocks back to the system when they are
    freed), which on a busy or virtualised machine costs more than the arithmetic itself.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised array of this shape and dtype, the same memory on every call."""
        array = self._buffers.get(name)
        if array is None or array.shape != tuple(shape) or array.dtype != dtype:
            array = self._buffers[name] = np.empty(shape, dtype=dtype)
        return array


_THREAD_STATE = threading.local()


def _workspace() -> _Workspace:
    workspace = getattr(_THREAD_STATE, "workspace", None)
    if workspace is None:
        workspace = _THREAD_STATE.workspace = _Workspace()
    return workspace


def _convert_mask_fast(
    raw: np.ndarray, void_label: int
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]] | None:
    """:func:`convert_mask` for the usual patch, in a few whole-array passes; ``None`` when the
    patch needs the general path (any invalid value, ids of ``_FAST_MAX_ID`` or more, too many
    nuclei), which then gives the same result or names the defect.

    Each (class channel c, raw id) pair gets the key ``(c + 1) * (M + 1) + id`` (M = largest id),
    so sorting keys sorts nuclei by (channel, raw id); a pixel's key is that of the last channel
    claiming it, and a lookup table numbers the keys 1..K.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "fiu" or raw.ndim != 3:
        return None
    work = _workspace()
    as_int = work.buffer("as_int", raw.shape, np.int32)  # (H, W, 6)
    # One pass to int32. A float that does not survive the cast exactly (NaN, inf, fraction,
    # beyond int32) and an integer that wraps around differ from their int32 value.
    with np.errstate(invalid="ignore", over="ignore"):
        np.copyto(as_int, raw, casting="unsafe")
    if raw.dtype != np.int32:
        same = np.equal(as_int, raw, out=work.buffer("same", raw.shape, np.bool_))
        if not same.all():
            return None
    background = as_int[..., BACKGROUND_CHANNEL]
    if as_int.min() < 0 or background.max() > 1:
        return None
    stride = int(as_int.max()) + 1  # > every raw id (the background channel holds 0 and 1)
    if stride > _FAST_MAX_ID:
        return None
    offsets = np.arange(1, NUM_NUCLEUS_CHANNELS + 1, dtype=np.int32)[:, None, None] * stride
    ids = as_int[..., :NUM_NUCLEUS_CHANNELS].transpose(2, 0, 1)  # (5, H, W) view
    keys = np.add(ids, offsets, out=work.buffer("keys", ids.shape, np.int32))
    claimed = np.greater(keys, offsets, out=work.buffer("claimed", ids.shape, np.bool_))  # id > 0
    pixel_key = work.buffer("pixel_key", ids.shape[1:], np.int32)
    pixel_key.fill(0)  # 0 = no class channel
    for c in range(NUM_NUCLEUS_CHANNELS):
        # Channels in order, later ones overwrite: the reference's rule for overlapping pixels.
        np.copyto(pixel_key, keys[c], where=claimed[c])
    present = np.zeros((NUM_NUCLEUS_CHANNELS + 1) * stride, dtype=np.bool_)
    present[keys[claimed]] = True
    nuclei = np.flatnonzero(present)  # sorted by (channel, raw id)
    if len(nuclei) > MAX_INSTANCES:
        return None
    number = np.zeros(len(present), dtype=np.uint16)
    number[nuclei] = np.arange(1, len(nuclei) + 1)
    instance = number[pixel_key]
    # Semantic label: that of the winning channel; background 0 or void where no channel claims.
    label_of = np.asarray((0,) + RAW_CHANNEL_TO_LABEL[:NUM_NUCLEUS_CHANNELS], dtype=np.uint8)
    winner = np.floor_divide(pixel_key, stride, out=work.buffer("winner", pixel_key.shape, np.int32))
    semantic = label_of[winner]  # winner: 0 = none, else channel + 1
    if void_label != 0:
        semantic[(winner == 0) & (background == 0)] = void_label
    channel = nuclei // stride
    labels = label_of[channel].tolist()
    raw_ids = (nuclei - channel * stride).tolist()
    return semantic, instance, labels, raw_ids


def _convert_mask_general(
    raw: np.ndarray, path: Path, index: int, void_label: int
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """:func:`convert_mask` for any patch: per-channel passes, every defect named."""
    ids, background = _check_mask(raw, path, index)
    channel_label = np.asarray(RAW_CHANNEL_TO_LABEL[:NUM_NUCLEUS_CHANNELS], dtype=np.uint8)
    winner = np.full(background.shape, -1, dtype=np.int8)  # class channel owning each pixel
    winner_id = np.zeros(background.shape, dtype=np.int64)  # its raw id there
    nuclei = []  # per channel: its distinct raw ids, sorted
    for c in range(NUM_NUCLEUS_CHANNELS):
        # Channels in order, later ones overwrite: the reference's rule for overlapping pixels.
        claimed = ids[c] > 0
        winner[claimed] = c
        winner_id[claimed] = ids[c][claimed]
        nuclei.append(np.unique(ids[c][claimed]))
    has_class = winner >= 0

    # A class channel beats the background channel; no class and no background is void.
    semantic = np.where(background, np.uint8(0), np.uint8(void_label)).astype(np.uint8)
    semantic[has_class] = channel_label[winner[has_class]]

    # Nuclei numbered 1..K in (channel, raw id) order; a pixel shows the nucleus that won it.
    counts = [len(u) for u in nuclei]
    if sum(counts) > MAX_INSTANCES:
        raise PanNukeDataError(
            f"{_where(path, index)}: {sum(counts)} nuclei exceed the {MAX_INSTANCES} supported"
        )
    offsets = np.cumsum([0] + counts)
    instance = np.zeros(background.shape, dtype=np.uint16)
    for c in range(NUM_NUCLEUS_CHANNELS):
        won = winner == c
        if counts[c] and won.any():
            instance[won] = offsets[c] + 1 + np.searchsorted(nuclei[c], winner_id[won])
    labels = [int(channel_label[c]) for c in range(NUM_NUCLEUS_CHANNELS) for _ in range(counts[c])]
    raw_ids = np.concatenate(nuclei).astype(int).tolist()
    return semantic, instance, labels, raw_ids


def read_patch(fold: RawFold, index: int, void_label: int = 0) -> Patch:
    """Read, validate and convert patch ``index`` of an opened fold (reads only that patch)."""
    return _convert(fold.images, fold.masks, fold.files, index, void_label)


def _convert(images: np.ndarray, masks: np.ndarray, files: FoldFiles, index: int, void_label: int) -> Patch:
    image = convert_image(images[index], files.images, index)
    semantic, instance, labels, raw_ids = convert_mask(masks[index], files.masks, index, void_label)
    return Patch(image, semantic, instance, labels, raw_ids)


class _PatchReader:
    """Reads one patch at a time of a ``.npy`` file into a reused array, with ``os.preadv``.

    A plain read copies the bytes from the page cache into memory this process already holds:
    no page of the file is mapped, so memory stays flat whatever the file size, and no page
    fault is taken per 4 KiB as with a memory map (costly on a busy or virtualised machine).
    Arrays stored in Fortran order (never the case in the release) are read memory-mapped.
    """

    def __init__(self, path: Path):
        self.path = path
        mapped = _open_npy(path)  # validates the header; maps nothing until read
        self.shape = tuple(mapped.shape[1:])
        self.dtype = mapped.dtype
        self.offset = int(getattr(mapped, "offset", 0))
        self.contiguous = bool(mapped.flags.c_contiguous) and isinstance(mapped, np.memmap)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        del mapped
        self.buffer = np.empty(self.shape, dtype=self.dtype)
        self.fd = os.open(path, os.O_RDONLY) if self.contiguous else None

    def read(self, index: int) -> np.ndarray:
        """Patch ``index`` (valid until the next call)."""
        if self.fd is None:
            self.buffer[...] = _open_npy(self.path)[index]  # one short-lived map per patch
            return self.buffer
        view = memoryview(self.buffer).cast("B")
        done = 0
        while done < self.nbytes:
            count = os.preadv(self.fd, [view[done:]], self.offset + index * self.nbytes + done)
            if count <= 0:
                raise PanNukeDataError(f"{_where(self.path, index)}: file ends early (truncated?)")
            done += count
        return self.buffer

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def iter_patches(files: FoldFiles, start: int, stop: int, void_label: int = 0) -> Iterator[tuple[int, Patch]]:
    """Yield ``(index, Patch)`` for patches ``start..stop-1`` of a fold, one at a time.

    Each patch is read into the same two arrays (see :class:`_PatchReader`), so memory stays
    flat whatever the fold size.
    """
    images = _PatchReader(files.images)
    try:
        masks = _PatchReader(files.masks)
        try:
            for index in range(start, stop):
                image = convert_image(images.read(index), files.images, index)
                semantic, instance, labels, raw_ids = convert_mask(
                    masks.read(index), files.masks, index, void_label
                )
                yield index, Patch(image, semantic, instance, labels, raw_ids)
        finally:
            masks.close()
    finally:
        images.close()
