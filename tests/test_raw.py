"""Raw PanNuke reading: locating folds, validation errors, and the label / instance conversion.

The conversion is checked against a straightforward per-pixel loop written here, independently
of the vectorised implementation.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from pannuke_hf.constants import FOLD_ZIP_NAMES, raw_relpaths
from pannuke_hf.data import raw
from pannuke_hf.data.raw import PanNukeDataError

H = W = 256


# --------------------------------------------------------------------------------------------
# Helpers: tiny hand-made folds and an independent reference conversion
# --------------------------------------------------------------------------------------------


def write_fold(root, fold, images, masks, types, images_dtype=None, masks_dtype=None):
    """Write one fold in the raw layout with np.lib.format.open_memmap; return FoldFiles."""
    paths = {k: root / rel for k, rel in raw_relpaths(fold).items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    for key, arr, dtype in (("images", images, images_dtype), ("masks", masks, masks_dtype)):
        arr = np.asarray(arr)
        out = np.lib.format.open_memmap(paths[key], mode="w+", dtype=dtype or arr.dtype, shape=arr.shape)
        out[...] = arr
        out.flush()
        del out
    np.save(paths["types"], np.asarray(types))
    return raw.FoldFiles(fold=fold, **paths)


def blank_mask():
    """A (256, 256, 6) float64 mask: all background."""
    m = np.zeros((H, W, 6))
    m[..., 5] = 1.0
    return m


def add_nucleus(mask, channel, raw_id, y0, y1, x0, x1, keep_background=False):
    mask[y0:y1, x0:x1, channel] = raw_id
    if not keep_background:
        mask[y0:y1, x0:x1, 5] = 0.0


def tiny_fold_arrays(n=2, seed=0):
    """n valid patches: random images, a few nuclei each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, H, W, 3)).astype(np.float64)
    masks = np.stack([blank_mask() for _ in range(n)])
    for i in range(n):
        add_nucleus(masks[i], i % 5, 300 + i, 10, 20, 10, 20)
        add_nucleus(masks[i], 4, 7, 50, 60, 50, 60)
    types = np.array(["Breast", "Colon"][:n] + ["Skin"] * max(0, n - 2))
    return images, masks, types


def reference_conversion(mask, void_label=0):
    """Per-pixel loop: later class channel wins; class beats background; (channel, id) = nucleus."""
    m = np.asarray(mask).tolist()
    pairs = set()
    for row in m:
        for px in row:
            for c in range(5):
                if px[c] > 0:
                    pairs.add((c, int(px[c])))
    order = sorted(pairs)
    number = {pair: k + 1 for k, pair in enumerate(order)}
    semantic = np.zeros((H, W), np.uint8)
    instance = np.zeros((H, W), np.uint16)
    for y, row in enumerate(m):
        for x, px in enumerate(row):
            owner = None
            for c in range(5):
                if px[c] > 0:
                    owner = c
            if owner is None:
                semantic[y, x] = 0 if px[5] == 1 else void_label
            else:
                semantic[y, x] = (owner + 1) % 6
                instance[y, x] = number[(owner, int(px[owner]))]
    labels = [(c + 1) % 6 for c, _ in order]
    raw_ids = [i for _, i in order]
    return semantic, instance, labels, raw_ids


def convert(mask, void_label=0):
    return raw.convert_mask(mask, "masks.npy", 0, void_label)


# --------------------------------------------------------------------------------------------
# Conversion: quirks, each with an expectation derived by hand
# --------------------------------------------------------------------------------------------


def test_ids_above_255_and_multiples_of_256_are_kept():
    mask = blank_mask()
    add_nucleus(mask, 0, 256, 0, 10, 0, 10)  # would become 0 after a uint8 cast
    add_nucleus(mask, 0, 512, 20, 30, 0, 10)
    add_nucleus(mask, 1, 3517, 40, 50, 0, 10)
    add_nucleus(mask, 1, 1, 60, 70, 0, 10)
    semantic, instance, labels, raw_ids = convert(mask)
    assert raw_ids == [256, 512, 1, 3517]  # ordered by channel, then raw id
    assert labels == [1, 1, 2, 2]
    assert (instance[0:10, 0:10] == 1).all() and (instance[20:30, 0:10] == 2).all()
    assert (instance[60:70, 0:10] == 3).all() and (instance[40:50, 0:10] == 4).all()
    assert (semantic[0:10, 0:10] == 1).all() and (semantic[40:50, 0:10] == 2).all()
    assert instance.dtype == np.uint16 and semantic.dtype == np.uint8


def test_same_id_in_two_channels_is_two_nuclei():
    mask = blank_mask()
    add_nucleus(mask, 2, 5, 0, 10, 0, 10)
    add_nucleus(mask, 3, 5, 0, 10, 20, 30)
    _, instance, labels, raw_ids = convert(mask)
    assert labels == [3, 4] and raw_ids == [5, 5]
    assert (instance[0:10, 0:10] == 1).all() and (instance[0:10, 20:30] == 2).all()


def test_overlap_later_channel_wins_and_overwritten_nucleus_is_kept():
    mask = blank_mask()
    add_nucleus(mask, 0, 10, 0, 20, 0, 20)  # neoplastic
    add_nucleus(mask, 4, 20, 10, 30, 10, 30)  # epithelial, overlaps the lower-right quarter
    add_nucleus(mask, 1, 30, 100, 104, 100, 104)  # inflammatory ...
    add_nucleus(mask, 2, 40, 100, 104, 100, 104)  # ... entirely covered by connective
    semantic, instance, labels, raw_ids = convert(mask)
    assert list(zip(labels, raw_ids)) == [(1, 10), (2, 30), (3, 40), (5, 20)]
    assert semantic[15, 15] == 5 and instance[15, 15] == 4  # overlap -> later channel (4)
    assert semantic[5, 5] == 1 and instance[5, 5] == 1
    # The inflammatory nucleus lost every pixel but is still listed (instance 2, no pixel).
    assert (instance[100:104, 100:104] == 3).all() and not (instance == 2).any()
    fg = instance > 0
    assert (semantic[fg] == np.asarray(labels)[instance[fg] - 1]).all()


def test_void_pixels_follow_void_label_and_background_conflict_goes_to_class():
    mask = blank_mask()
    mask[0:8, 0:8, 5] = 0  # void: no class, background 0
    add_nucleus(mask, 3, 9, 50, 60, 50, 60, keep_background=True)  # class + background 1
    for void_label in (0, 255):
        semantic, instance, labels, _ = convert(mask, void_label)
        assert (semantic[0:8, 0:8] == void_label).all() and (instance[0:8, 0:8] == 0).all()
        assert (semantic[50:60, 50:60] == 4).all() and (instance[50:60, 50:60] == 1).all()
        assert semantic[100, 100] == 0 and labels == [4]


def test_split_id_is_one_instance_and_empty_patch_has_none():
    mask = blank_mask()
    add_nucleus(mask, 0, 700, 0, 10, 0, 10)
    add_nucleus(mask, 0, 700, 200, 210, 200, 210)  # disconnected piece of the same nucleus
    _, instance, labels, raw_ids = convert(mask)
    assert labels == [1] and raw_ids == [700]
    assert (instance[0:10, 0:10] == 1).all() and (instance[200:210, 200:210] == 1).all()

    semantic, instance, labels, raw_ids = convert(blank_mask())
    assert labels == [] and raw_ids == [] and not instance.any() and not semantic.any()


def test_integer_dtypes_convert_like_float64():
    mask = blank_mask()
    add_nucleus(mask, 1, 1024, 5, 25, 5, 25)
    expected = convert(mask)
    got = raw.convert_mask(mask.astype(np.int32), "m.npy", 0)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    image = np.full((H, W, 3), 200.0)
    np.testing.assert_array_equal(
        raw.convert_image(image.astype(np.float32), "i.npy", 0), image.astype(np.uint8)
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fractional_image_values_round_to_nearest_with_halves_to_even(dtype):
    """The documented rule: float pixels are rounded to the nearest integer, exact halves to the
    even neighbour (IEEE round-half-even, numpy's rint): 12.5 -> 12, 13.5 -> 14. Expected values
    are literals worked out by hand from that rule (truncation or half-up would differ)."""
    values = [12.5, 12.49, 12.51, 13.5, 254.6, 254.5, 0.4, 0.5, 1.5, 0.0, 255.0, 99.999, 100.2]
    expected = [12, 12, 13, 14, 255, 254, 0, 0, 2, 0, 255, 100, 100]
    image = np.zeros((H, W, 3), dtype=dtype)
    image[0, : len(values), 0] = values
    image[1, 0] = [127.5, 128.5, 200.7]
    out = raw.convert_image(image, "images.npy", 0)
    assert out.dtype == np.uint8
    assert out[0, : len(values), 0].tolist() == expected
    assert out[1, 0].tolist() == [128, 128, 201]
    assert not out[2:].any()


def test_generated_folds_match_reference_loop(raw_root, raw_fold_sizes):
    """Every quirk patch of the generated release, against the per-pixel loop."""
    files = raw.fold_files(raw_root, 1)
    fold = raw.open_fold(files)
    assert len(fold) == raw_fold_sizes[1]
    masks = np.load(files.masks, mmap_mode="r")
    images = np.load(files.images, mmap_mode="r")
    seen_overlap = seen_void = seen_big = False
    for void_label in (0, 255):
        for index, patch in raw.iter_patches(files, 0, len(fold), void_label=void_label):
            if void_label == 255 and not (np.asarray(masks[index]).sum(-1) == 0).any():
                continue  # void_label only matters on patches with void pixels
            semantic, instance, labels, raw_ids = reference_conversion(masks[index], void_label)
            np.testing.assert_array_equal(patch.semantic, semantic, err_msg=f"patch {index}")
            np.testing.assert_array_equal(patch.instance, instance, err_msg=f"patch {index}")
            assert patch.instance_labels == labels and patch.instance_raw_ids == raw_ids
            np.testing.assert_array_equal(patch.image, images[index].astype(np.uint8))
            seen_overlap |= bool(((masks[index][..., :5] > 0).sum(-1) > 1).any())
            seen_void |= bool((masks[index].sum(-1) == 0).any())
            seen_big |= any(i > 255 for i in raw_ids) and any(i % 256 == 0 for i in raw_ids)
    assert seen_overlap and seen_void and seen_big  # the fixture really carries the quirks


# --------------------------------------------------------------------------------------------
# Locating folds, zips
# --------------------------------------------------------------------------------------------


def test_missing_fold_and_missing_file_are_named(tmp_path):
    images, masks, types = tiny_fold_arrays()
    write_fold(tmp_path, 1, images, masks, types)
    write_fold(tmp_path, 2, images, masks, types)
    with pytest.raises(PanNukeDataError, match="fold 3 not found.*Fold 3.*fold_3.zip"):
        raw.find_fold_sources(tmp_path)
    write_fold(tmp_path, 3, images, masks, types)
    assert raw.find_fold_sources(tmp_path) == {1: tmp_path, 2: tmp_path, 3: tmp_path}
    (tmp_path / raw_relpaths(2)["types"]).unlink()
    with pytest.raises(PanNukeDataError, match="missing file .*fold2/types.npy"):
        raw.fold_files(tmp_path, 2)
    with pytest.raises(PanNukeDataError, match="does not exist"):
        raw.find_fold_sources(tmp_path / "nope")


def test_zip_extraction_is_cached_and_equal_to_folder(raw_root, raw_zips, tmp_path):
    sources = raw.find_fold_sources(raw_zips)
    assert sources[2] == raw_zips / FOLD_ZIP_NAMES[2]
    root = raw.extract_fold_zip(sources[2], 2, tmp_path / "x")
    again = raw.extract_fold_zip(sources[2], 2, tmp_path / "x")
    assert root == again and [p.name for p in (tmp_path / "x").iterdir()] == [root.name]
    a, b = raw.fold_files(root, 2), raw.fold_files(raw_root, 2)
    for key in ("images", "types", "masks"):
        assert getattr(a, key).read_bytes() == getattr(b, key).read_bytes()


def test_corrupt_zip_is_named_and_leaves_nothing(tmp_path):
    bad = tmp_path / "fold_1.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip file at all" * 10)
    with pytest.raises(PanNukeDataError, match="corrupt zip file .*fold_1.zip"):
        raw.extract_fold_zip(bad, 1, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())

    # A zip with a damaged member (CRC / deflate error on read).
    images, masks, types = tiny_fold_arrays(1)
    src = tmp_path / "src"
    write_fold(src, 1, images, masks, types)
    good = tmp_path / "good" / "fold_1.zip"
    good.parent.mkdir()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in raw_relpaths(1).values():
            zf.write(src / rel, rel)
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    good.write_bytes(bytes(data))
    with pytest.raises(PanNukeDataError, match="corrupt zip file .*fold_1.zip"):
        raw.extract_fold_zip(good, 1, tmp_path / "cache2")
    assert not any((tmp_path / "cache2").iterdir())


def test_zip_without_arrays_is_named(tmp_path):
    z = tmp_path / "fold_2.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("Fold 2/README.md", "hello")
    with pytest.raises(
        PanNukeDataError, match=r"fold_2.zip.*does not contain 'Fold 2/images/fold2/images.npy'"
    ):
        raw.extract_fold_zip(z, 2, tmp_path / "cache")


def test_source_fingerprint_changes_with_raw_files(tmp_path):
    images, masks, types = tiny_fold_arrays(1)
    for fold in (1, 2, 3):
        write_fold(tmp_path, fold, images, masks, types)
    sources = raw.find_fold_sources(tmp_path)
    before = raw.source_fingerprint(sources)
    assert len(before) == 9
    write_fold(tmp_path, 3, images, masks + 0, types)  # rewritten: new mtime
    assert raw.source_fingerprint(sources) != before


# --------------------------------------------------------------------------------------------
# Bad input: file-level errors
# --------------------------------------------------------------------------------------------


def test_corrupt_npy_is_named(tmp_path):
    images, masks, types = tiny_fold_arrays()
    files = write_fold(tmp_path, 1, images, masks, types)
    files.masks.write_bytes(b"\x93NUMPY garbage header")
    with pytest.raises(PanNukeDataError, match=r"masks\.npy.*not a readable \.npy"):
        raw.open_fold(files)
    # Truncated data (header fine, bytes missing).
    files = write_fold(tmp_path, 1, images, masks, types)
    data = files.images.read_bytes()
    files.images.write_bytes(data[: len(data) // 2])
    with pytest.raises(PanNukeDataError, match=r"images\.npy.*not a readable \.npy"):
        raw.open_fold(files)
    files = write_fold(tmp_path, 1, images, masks, types)
    files.types.write_bytes(b"not numpy")
    with pytest.raises(PanNukeDataError, match=r"types\.npy.*not a readable"):
        raw.open_fold(files)


@pytest.mark.parametrize(
    "which, shape, message",
    [
        ("images", (2, 256, 256), r"images\.npy.*shape \(N, 256, 256, 3\), got \(2, 256, 256\)"),
        ("images", (2, 128, 256, 3), r"images\.npy.*got \(2, 128, 256, 3\)"),
        ("masks", (2, 256, 256, 5), r"masks\.npy.*shape \(N, 256, 256, 6\), got \(2, 256, 256, 5\)"),
    ],
)
def test_wrong_shape_is_named(tmp_path, which, shape, message):
    images, masks, types = tiny_fold_arrays()
    arrays = {"images": images, "masks": masks}
    arrays[which] = np.zeros(shape)
    files = write_fold(tmp_path, 1, arrays["images"], arrays["masks"], types)
    with pytest.raises(PanNukeDataError, match=message):
        raw.open_fold(files)


def test_wrong_dtype_is_named(tmp_path):
    images, masks, types = tiny_fold_arrays()
    files = write_fold(tmp_path, 1, images, masks, types, masks_dtype=np.complex64)
    with pytest.raises(PanNukeDataError, match=r"masks\.npy.*dtype complex64"):
        raw.open_fold(files)
    files = write_fold(tmp_path, 1, images, masks, np.array([1, 2]))
    with pytest.raises(PanNukeDataError, match=r"types\.npy.*must be strings"):
        raw.open_fold(files)
    # Object arrays would need pickle: refused, not executed.
    np.save(files.types, np.array(["Breast", "Colon"], dtype=object), allow_pickle=True)
    with pytest.raises(PanNukeDataError, match=r"types\.npy"):
        raw.open_fold(files)


def test_count_mismatch_names_all_files(tmp_path):
    images, masks, types = tiny_fold_arrays(3)
    files = write_fold(tmp_path, 1, images, masks[:2], types)
    with pytest.raises(
        PanNukeDataError, match=r"different numbers.*images\.npy': 3.*masks\.npy': 2.*types\.npy': 3"
    ):
        raw.open_fold(files)
    files = write_fold(tmp_path, 1, images, masks, types[:1])
    with pytest.raises(PanNukeDataError, match=r"types\.npy': 1"):
        raw.open_fold(files)


def test_unknown_tissue_is_named_with_index(tmp_path):
    images, masks, _ = tiny_fold_arrays(3)
    files = write_fold(tmp_path, 1, images, masks, np.array(["Breast", "Colon", "Head&Neck"]))
    with pytest.raises(PanNukeDataError, match=r"types\.npy.*patch 2: unknown tissue 'Head&Neck'"):
        raw.open_fold(files)
    # Bytes strings of known tissues are fine.
    files = write_fold(tmp_path, 1, images, masks, np.array([b"Breast", b"Colon", b"Skin"]))
    assert raw.open_fold(files).types == ["Breast", "Colon", "Skin"]


# --------------------------------------------------------------------------------------------
# Bad input: per-patch errors (raised lazily, naming file and patch index)
# --------------------------------------------------------------------------------------------


def _corrupt(images, masks, kind):
    if kind == "image_nan":
        images[1, 5, 5, 0] = np.nan
    elif kind == "image_high":
        images[1, 0, 0, 2] = 256.0
    elif kind == "image_negative":
        images[1, 0, 0, 2] = -1.0
    elif kind == "image_inf":
        images[1, 5, 5, 1] = np.inf
    elif kind == "mask_inf":
        masks[1, 3, 3, 4] = np.inf
    elif kind == "mask_nan":
        masks[1, 3, 3, 2] = np.nan
    elif kind == "id_negative":
        masks[1, 3, 3, 1] = -4.0
    elif kind == "id_fraction":
        masks[1, 3, 3, 0] = 2.5
    elif kind == "background_2":
        masks[1, 3, 3, 5] = 2.0
    elif kind == "background_nan":
        masks[1, 3, 3, 5] = np.nan


@pytest.mark.parametrize(
    "kind, message",
    [
        ("image_nan", r"images\.npy': patch 1: image holds NaN"),
        ("image_high", r"images\.npy': patch 1: image values must lie in 0-255"),
        ("image_negative", r"images\.npy': patch 1: image values must lie in 0-255"),
        ("image_inf", r"images\.npy': patch 1: image holds NaN or infinite"),
        ("mask_inf", r"masks\.npy': patch 1: mask channel 4 holds infinite values"),
        ("mask_nan", r"masks\.npy': patch 1: mask channel 2 holds NaN"),
        ("id_negative", r"masks\.npy': patch 1: mask channel 1 holds negative"),
        ("id_fraction", r"masks\.npy': patch 1: mask channel 0 holds fractional"),
        ("background_2", r"masks\.npy': patch 1: background channel 5 must hold only 0 and 1, found \[2"),
        ("background_nan", r"masks\.npy': patch 1: mask channel 5 holds NaN"),
    ],
)
def test_bad_patch_values_name_file_and_index(tmp_path, kind, message):
    images, masks, types = tiny_fold_arrays(3)
    _corrupt(images, masks, kind)
    files = write_fold(tmp_path, 1, images, masks, types)
    fold = raw.open_fold(files)  # lazily checked: opening succeeds
    it = raw.iter_patches(files, 0, len(fold))
    index, _ = next(it)  # patch 0 is fine
    assert index == 0
    with pytest.raises(PanNukeDataError, match=message):
        next(it)


# --------------------------------------------------------------------------------------------
# The fast conversion path and the patch reader (added for speed): same results as the
# per-pixel loop where the fast path hands over to the general one, and for every file layout
# --------------------------------------------------------------------------------------------


def test_large_ids_and_integer_dtypes_match_reference_loop():
    """Ids past the fast path's lookup-table limit (2**16), up to the largest accepted id, and
    masks of other integer dtypes, against the per-pixel loop."""
    mask = blank_mask()
    add_nucleus(mask, 0, 70_000, 0, 10, 0, 10)
    add_nucleus(mask, 2, 2**31 - 1, 20, 30, 0, 10)
    add_nucleus(mask, 2, 3, 25, 40, 5, 15)  # overlaps the previous one in the same channel
    add_nucleus(mask, 4, 65_535, 50, 60, 50, 60)
    for dtype in (np.float64, np.int64, np.uint32):
        got = raw.convert_mask(mask.astype(dtype), "m.npy", 0)
        for a, b in zip(got, reference_conversion(mask)):
            np.testing.assert_array_equal(a, b, err_msg=str(dtype))
    small = blank_mask()
    add_nucleus(small, 4, 65_535, 50, 60, 50, 60)  # largest id the fast path takes
    add_nucleus(small, 1, 1, 0, 5, 0, 5)
    for dtype in (np.uint16, np.int32, np.float32):
        for a, b in zip(raw.convert_mask(small.astype(dtype), "m.npy", 0), reference_conversion(small)):
            np.testing.assert_array_equal(a, b, err_msg=str(dtype))


def test_integer_ids_beyond_int32_are_refused_not_wrapped():
    """An int64 id of 2**32 + 5 must not be read as 5 (what a 32-bit cast would make of it)."""
    mask = blank_mask().astype(np.int64)
    add_nucleus(mask, 1, 2**32 + 5, 0, 10, 0, 10)
    with pytest.raises(PanNukeDataError, match=r"m\.npy': patch 7: mask holds instance ids above 2147483647"):
        raw.convert_mask(mask, "m.npy", 7)


def test_fortran_order_and_big_endian_files_read_like_c_order(tmp_path):
    images, masks, types = tiny_fold_arrays(3, seed=4)
    add_nucleus(masks[2], 3, 1234, 100, 140, 30, 60)
    expected = list(raw.iter_patches(write_fold(tmp_path / "c", 1, images, masks, types), 0, 3))
    for name, convert_array in (
        ("fortran", np.asfortranarray),
        ("big_endian", lambda a: a.astype(a.dtype.newbyteorder(">"))),
    ):
        files = write_fold(tmp_path / name, 1, images, masks, types)
        np.save(files.images, convert_array(images))
        np.save(files.masks, convert_array(masks))
        assert len(raw.open_fold(files)) == 3
        got = list(raw.iter_patches(files, 1, 3))  # a range not starting at 0
        assert [i for i, _ in got] == [1, 2]
        for (_, a), (_, b) in zip(got, expected[1:]):
            for key in ("image", "semantic", "instance"):
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=f"{name} {key}")
            assert (a.instance_labels, a.instance_raw_ids) == (b.instance_labels, b.instance_raw_ids)


def test_truncated_masks_file_is_named_with_the_patch(tmp_path):
    images, masks, types = tiny_fold_arrays(3)
    files = write_fold(tmp_path, 1, images, masks, types)
    it = raw.iter_patches(files, 0, 3)
    next(it)  # the files are opened and checked here
    with open(files.masks, "r+b") as handle:  # the file shrinks while it is being read
        handle.truncate(files.masks.stat().st_size - 1000)
    next(it)
    with pytest.raises(PanNukeDataError, match=r"masks\.npy': patch 2: file ends early"):
        next(it)


def test_iter_patches_has_no_dead_block_argument():
    # `block` once sized the memory maps; it stopped having an effect and was removed
    import inspect

    assert list(inspect.signature(raw.iter_patches).parameters) == ["files", "start", "stop", "void_label"]
