"""The generated raw folds: exact release format, every quirk where documented, distinct classes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from _fixtures_data import RAW_FOLD_SIZES, RAW_SEED
from scipy import ndimage

from pannuke_hf.commands import make_synthetic as make_synthetic_cmd
from pannuke_hf.constants import FOLDS, PATCH_SIZE, TISSUES, raw_relpaths
from pannuke_hf.data.synthetic import QUIRK_PATCHES, make_synthetic_folds, make_synthetic_patch, quirk_indices

QUIRK_AT = {name: index for index, name in QUIRK_PATCHES.items()}


def _load(root, fold):
    paths = {key: root / rel for key, rel in raw_relpaths(fold).items()}
    return (
        np.load(paths["images"], mmap_mode="r"),
        np.load(paths["types"]),
        np.load(paths["masks"], mmap_mode="r"),
    )


def _pieces(channel_map: np.ndarray, raw_id: float) -> int:
    """Number of 8-connected pieces of one id in one class channel."""
    _, count = ndimage.label(channel_map == raw_id, structure=np.ones((3, 3)))
    return count


@pytest.mark.parametrize("fold", FOLDS)
def test_files_shapes_dtypes(raw_root, fold):
    images, types, masks = _load(raw_root, fold)
    n = RAW_FOLD_SIZES[fold]
    assert images.shape == (n, PATCH_SIZE, PATCH_SIZE, 3) and images.dtype == np.float64
    assert masks.shape == (n, PATCH_SIZE, PATCH_SIZE, 6) and masks.dtype == np.float64
    assert types.shape == (n,) and types.dtype.kind == "U"
    assert set(types.tolist()) <= set(TISSUES)
    assert images.min() >= 0 and images.max() <= 255
    assert np.array_equal(images, np.rint(images))
    assert np.array_equal(masks, np.rint(masks)) and masks.min() >= 0


@pytest.mark.parametrize("fold", FOLDS)
def test_channel_semantics(raw_root, fold):
    _, _, masks = _load(raw_root, fold)
    for index in range(len(masks)):
        m = np.asarray(masks[index])
        background = m[..., 5]
        assert set(np.unique(background).tolist()) <= {0.0, 1.0}
        if index == QUIRK_AT["void"]:
            continue
        nucleus = (m[..., :5] > 0).any(axis=-1)
        # Channel 5 is exactly the complement of the nucleus pixels.
        assert np.array_equal(background == 1, ~nucleus), f"fold {fold} patch {index}"


@pytest.mark.parametrize("fold", FOLDS)
def test_quirks_where_documented(raw_root, fold):
    _, _, masks = _load(raw_root, fold)
    classes = np.asarray(masks[..., :5])
    channels_per_pixel = (classes > 0).sum(axis=-1)  # (N, H, W)

    assert np.all(classes[QUIRK_AT["empty"]] == 0)
    assert np.all(masks[QUIRK_AT["empty"], ..., 5] == 1)

    assert np.all(masks[QUIRK_AT["void"]] == 0)
    void_patches = [i for i in range(len(masks)) if np.any(channels_per_pixel[i] + masks[i, ..., 5] == 0)]
    assert void_patches == [QUIRK_AT["void"]]

    overlap_patches = np.flatnonzero((channels_per_pixel >= 2).any(axis=(1, 2))).tolist()
    assert overlap_patches == [QUIRK_AT["overlap"]]

    present = [c for c in range(5) if classes[QUIRK_AT["all_classes"], ..., c].any()]
    assert present == [0, 1, 2, 3, 4]

    split = []
    for index in range(len(masks)):
        for channel in range(5):
            for raw_id in np.unique(classes[index, ..., channel])[1:]:
                if _pieces(classes[index, ..., channel], raw_id) > 1:
                    split.append((index, channel))
    assert split == [(QUIRK_AT["split_id"], 0)]


@pytest.mark.parametrize("fold", FOLDS)
def test_ids_above_255_and_multiples_of_256(raw_root, fold):
    _, _, masks = _load(raw_root, fold)
    for index in range(len(masks)):
        ids = np.unique(np.asarray(masks[index, ..., :5]))[1:]
        if index in (QUIRK_AT["empty"], QUIRK_AT["void"]):
            assert ids.size == 0
            continue
        assert (ids > 255).any(), index
        assert (ids % 256 == 0).any(), index  # the ids a uint8 cast turns into 0
        # Not 1..K: the ids have gaps.
        assert not np.array_equal(ids, np.arange(1, ids.size + 1))


def test_zips_hold_the_same_arrays(raw_root, raw_zips):
    for fold in FOLDS:
        with zipfile.ZipFile(raw_zips / f"fold_{fold}.zip") as archive:
            names = archive.namelist()
            assert all(name.startswith(f"Fold {fold}/") for name in names)
            for rel in raw_relpaths(fold).values():
                from_zip = np.load(io.BytesIO(archive.read(rel)))
                assert np.array_equal(from_zip, np.load(raw_root / rel)), rel
    assert not list(raw_zips.glob("Fold *")), "zip mode leaves no extracted folders"


def test_patches_do_not_depend_on_fold_size(raw_root, tmp_path):
    small = make_synthetic_folds(tmp_path, {2: 2}, seed=RAW_SEED, folds=(2,))
    images, types, masks = _load(small, 2)
    ref_images, ref_types, ref_masks = _load(raw_root, 2)
    assert np.array_equal(images, ref_images[:2]) and np.array_equal(masks, ref_masks[:2])
    assert types.tolist() == ref_types[:2].tolist()
    assert not (tmp_path / "Fold 1").exists()
    other_seed = make_synthetic_patch(RAW_SEED + 1, 2, 0)[1]
    assert not np.array_equal(other_seed, ref_masks[0])


def test_quirk_indices_follow_fold_size():
    assert quirk_indices(3) == {"all_classes": [0], "empty": [1], "void": [2], "overlap": [], "split_id": []}
    assert all(v for v in quirk_indices(5).values())


def test_quirks_can_be_disabled():
    _, masks, _ = make_synthetic_patch(0, 1, QUIRK_AT["void"], quirks=False)
    assert masks[..., :5].any() and np.array_equal(masks[..., 5] == 1, ~(masks[..., :5] > 0).any(-1))


def _class_properties(images: np.ndarray, masks: np.ndarray) -> dict[int, dict[str, float]]:
    """Mean area, elongation and mean RGB of the nuclei of each class (independent of the generator)."""
    found: dict[int, list[tuple[float, float, np.ndarray]]] = {c: [] for c in range(5)}
    for image, mask in zip(images, masks):
        for channel in range(5):
            labelled, count = ndimage.label(mask[..., channel] > 0)
            for piece in range(1, count + 1):
                ys, xs = np.nonzero(labelled == piece)
                if ys.size < 5:
                    continue
                eig = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(float)))
                found[channel].append((ys.size, np.sqrt(eig[1] / max(eig[0], 1e-6)), image[ys, xs].mean(0)))
    return {
        c: {
            "area": float(np.mean([a for a, _, _ in v])),
            "elongation": float(np.median([e for _, e, _ in v])),
            "rgb": np.mean([rgb for _, _, rgb in v], axis=0),
        }
        for c, v in found.items()
    }


def test_classes_are_visibly_distinct():
    patches = [make_synthetic_patch(3, 1, i, quirks=False) for i in range(6)]
    props = _class_properties(np.stack([p[0] for p in patches]), np.stack([p[1] for p in patches]))
    area = {c: props[c]["area"] for c in range(5)}
    # dead < inflammatory < epithelial < neoplastic in size; connective elongated, the others not.
    assert area[3] < area[1] < area[4] < area[0]
    assert props[2]["elongation"] > 3 and all(props[c]["elongation"] < 2 for c in (0, 1, 3))
    colours = np.stack([props[c]["rgb"] for c in range(5)])
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[np.triu_indices(5, 1)].min() > 25  # stains differ by more than the noise


def test_cli_writes_zips(tmp_path, capsys):
    code = make_synthetic_cmd.main(
        [str(tmp_path), "--patches-per-fold", "2", "--zip", "--folds", "3", "--seed", "5"]
    )
    assert code == 0 and "wrote 2" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_3.zip"]
    with zipfile.ZipFile(tmp_path / "fold_3.zip") as archive:
        masks = np.load(io.BytesIO(archive.read(raw_relpaths(3)["masks"])))
    assert np.array_equal(masks[1], make_synthetic_patch(5, 3, 1)[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patches_per_fold": {1: 2}}, "no count for folds"),
        ({"folds": (4,)}, "unknown fold"),
        ({"patches_per_fold": 0}, ">= 1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_folds(tmp_path, **kwargs)
