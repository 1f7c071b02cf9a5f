"""Targets of the distance-map ("hv") head: known values, flips, range, the transform that makes them.

Expected values come from the definition (docs/instance-head.md): each nucleus pixel's x (y) offset
from the nucleus's centroid, divided by the largest offset on its side of the centroid.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pannuke_hf.training.augment import SegmentationTransform
from pannuke_hf.training.instance_targets import InstanceTargetTransform, hv_targets, nuclei_targets


def reference_hv(instance_map: np.ndarray) -> np.ndarray:
    """The definition, nucleus by nucleus and pixel by pixel (slow, obviously right)."""
    out = np.zeros((2,) + instance_map.shape)
    for nucleus in np.unique(instance_map):
        if nucleus == 0:
            continue
        ys, xs = np.nonzero(instance_map == nucleus)
        for channel, coords in ((0, xs), (1, ys)):
            centre = coords.mean()
            right = max(c - centre for c in coords)
            left = max(centre - c for c in coords)
            for y, x, c in zip(ys, xs, coords):
                offset = c - centre
                scale = right if offset > 0 else left
                out[channel, y, x] = offset / scale if scale > 0 else 0.0
    return out


def disc(shape, cy, cx, radius) -> np.ndarray:
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def test_disc_offsets_are_the_offsets_over_the_radius():
    instance_map = np.zeros((21, 23), dtype=np.uint16)
    instance_map[disc(instance_map.shape, 10, 12, 5)] = 7
    hv = hv_targets(instance_map)
    yy, xx = np.indices(instance_map.shape)
    inside = instance_map > 0
    # Symmetric disc: centroid (10, 12), the furthest pixel on each side is 5 px away.
    np.testing.assert_allclose(hv[0][inside], (xx[inside] - 12) / 5, atol=1e-6)
    np.testing.assert_allclose(hv[1][inside], (yy[inside] - 10) / 5, atol=1e-6)
    assert (hv[:, ~inside] == 0).all()
    assert hv[0, 10, 7] == -1 and hv[0, 10, 17] == 1 and hv[1, 5, 12] == -1 and hv[1, 15, 12] == 1


def test_square_with_an_even_side_has_a_half_pixel_centre():
    instance_map = np.zeros((10, 12), dtype=np.int32)
    instance_map[2:6, 3:7] = 1  # 4x4: centroid (3.5, 4.5), offsets -1.5, -0.5, 0.5, 1.5
    hv = hv_targets(instance_map)
    np.testing.assert_allclose(hv[0, 2:6, 3:7], np.tile([-1, -1 / 3, 1 / 3, 1], (4, 1)), atol=1e-6)
    np.testing.assert_allclose(hv[1, 2:6, 3:7], np.tile([[-1], [-1 / 3], [1 / 3], [1]], (1, 4)), atol=1e-6)


def test_each_side_is_scaled_by_its_own_extent():
    # A right triangle: the centroid is off-centre, so the two sides have different extents.
    instance_map = np.zeros((9, 9), dtype=np.int64)
    for row in range(1, 8):
        instance_map[row, 1 : 1 + row] = 3
    hv = hv_targets(instance_map)
    np.testing.assert_allclose(hv, reference_hv(instance_map), atol=1e-6)
    xs = np.nonzero(instance_map)[1]
    centre = xs.mean()
    assert hv[0, 7, 7] == pytest.approx(1.0) and hv[0, 7, 1] == pytest.approx(-1.0)
    assert hv[0, 4, 4] == pytest.approx((4 - centre) / (7 - centre))


def test_many_nuclei_with_any_ids_match_the_definition():
    rng = np.random.default_rng(0)
    instance_map = np.zeros((48, 40), dtype=np.uint16)
    ids = [65535, 3, 300, 12, 999]
    for nucleus in ids:  # touching and overlapping ellipses; later ones win
        cy, cx = rng.uniform(8, 36), rng.uniform(8, 32)
        yy, xx = np.indices(instance_map.shape)
        inside = ((yy - cy) / rng.uniform(3, 8)) ** 2 + ((xx - cx) / rng.uniform(3, 8)) ** 2 <= 1
        instance_map[inside] = nucleus
    instance_map[0, 0] = 12  # a piece of nucleus 12 far from its body: one nucleus, one centroid
    hv = hv_targets(instance_map)
    assert hv.dtype == np.float32 and hv.shape == (2, 48, 40)
    np.testing.assert_allclose(hv, reference_hv(instance_map), atol=1e-6)


def test_every_nucleus_pixel_lies_in_minus_one_one_and_reaches_both_ends():
    rng = np.random.default_rng(1)
    instance_map = rng.integers(0, 30, size=(64, 64)).astype(np.int32)
    hv = hv_targets(instance_map)
    assert np.abs(hv).max() <= 1.0
    for nucleus in np.unique(instance_map[instance_map > 0]):
        for channel in range(2):
            values = hv[channel][instance_map == nucleus]
            assert values.min() == pytest.approx(-1.0) and values.max() == pytest.approx(1.0)


def test_one_pixel_wide_nucleus_and_empty_map():
    instance_map = np.zeros((6, 6), dtype=np.uint8)
    instance_map[1:5, 2] = 4  # one column: no horizontal extent
    hv = hv_targets(instance_map)
    assert (hv[0] == 0).all()
    np.testing.assert_allclose(hv[1, 1:5, 2], [-1, -1 / 3, 1 / 3, 1], atol=1e-6)
    assert (hv_targets(np.zeros((5, 7), dtype=np.uint16)) == 0).all()


def test_flipped_map_gives_flipped_sign_corrected_targets():
    rng = np.random.default_rng(2)
    instance_map = np.zeros((32, 32), dtype=np.int32)
    instance_map[4:14, 3:9] = 1
    instance_map[4:10, 9:20] = 2  # touches nucleus 1
    for row in range(18, 30):
        instance_map[row, 5 : 5 + row - 16] = 3
    instance_map[rng.random((32, 32)) < 0.02] = 0
    hv = hv_targets(instance_map)
    flipped = hv_targets(np.fliplr(instance_map).copy())
    np.testing.assert_allclose(flipped[0], -np.fliplr(hv[0]), atol=1e-6)  # x offsets change sign
    np.testing.assert_allclose(flipped[1], np.fliplr(hv[1]), atol=1e-6)  # y offsets do not
    vflipped = hv_targets(np.flipud(instance_map).copy())
    np.testing.assert_allclose(vflipped[1], -np.flipud(hv[1]), atol=1e-6)


def test_nuclei_targets_ignore_what_the_labels_ignore():
    instance_map = np.array([[0, 5, 5], [0, 0, 9]])
    labels = np.array([[0, 1, 1], [255, 0, 3]])
    np.testing.assert_array_equal(nuclei_targets(instance_map, labels), [[0, 1, 1], [255, 0, 1]])
    np.testing.assert_array_equal(nuclei_targets(instance_map), [[0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="differ in size"):
        nuclei_targets(instance_map, labels[:1])


def test_bad_instance_maps_are_refused():
    with pytest.raises(ValueError, match="integer"):
        hv_targets(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="integer"):
        hv_targets(np.zeros((4, 4, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        hv_targets(np.full((4, 4), -1))


def _example(rng: np.random.Generator) -> dict:
    import PIL.Image

    instance_map = np.zeros((64, 64), dtype=np.uint16)
    instance_map[10:30, 5:25] = 300
    instance_map[12:28, 25:40] = 7
    instance_map[40:50, 44:60] = 2
    labels = np.where(instance_map > 0, 2, 0).astype(np.uint8)
    labels[60:, :] = 255
    image = PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return (
        {
            "image": [image],
            "semantic_mask": [PIL.Image.fromarray(labels)],
            "instance_mask": [PIL.Image.fromarray(instance_map)],
        },
        instance_map,
        labels,
    )


@pytest.mark.parametrize("flip", [False, True])
def test_transform_computes_targets_after_resize_and_flip(flip):
    batch, instance_map, labels = _example(np.random.default_rng(3))
    inner = SegmentationTransform(32, train=True, keep_instances=True, flip_prob=1.0 if flip else 0.0)
    transform = InstanceTargetTransform(inner)
    assert transform.columns == ["image", "semantic_mask", "instance_mask"]
    out = transform.transform_batch(batch, keys=[(0, 0)])
    assert set(out) == {"pixel_values", "labels", "nuclei_targets", "hv_targets"}
    # Expected: nearest resize by 2 keeps every other pixel (OpenCV INTER_NEAREST: source = 2 * x),
    # then the flip, then the definition.
    small = instance_map[::2, ::2]
    small_labels = labels[::2, ::2]
    if flip:
        small, small_labels = np.fliplr(small), np.fliplr(small_labels)
    hv = out["hv_targets"][0]
    assert hv.dtype == torch.float32 and hv.shape == (2, 32, 32)
    np.testing.assert_allclose(hv.numpy(), reference_hv(small), atol=1e-6)
    expected_nuclei = np.where(small_labels == 255, 255, small > 0)
    np.testing.assert_array_equal(out["nuclei_targets"][0].numpy(), expected_nuclei)
    # The image's leftmost pixel of nucleus 300 has h = -1; flipped, it is the rightmost, h = +1.
    row, left_end = 10, int(np.flatnonzero(instance_map[::2, ::2][10] == 300).min())
    column = 31 - left_end if flip else left_end
    assert hv[0, row, column] == (1.0 if flip else -1.0)


def test_transform_needs_the_instance_maps():
    with pytest.raises(ValueError, match="keep_instances"):
        InstanceTargetTransform(SegmentationTransform(32, train=True))


def test_generated_touching_nuclei():
    """``touching`` makes same-class nuclei touch (one semantic blob, two nuclei); 0 changes nothing."""
    from scipy import ndimage

    from pannuke_hf.data.synthetic import make_synthetic_patch
    from pannuke_hf.nuclei import release_to_instances

    default = make_synthetic_patch(0, 1, 7)
    zero = make_synthetic_patch(0, 1, 7, touching=0.0)
    np.testing.assert_array_equal(default[0], zero[0])
    np.testing.assert_array_equal(default[1], zero[1])
    merged = 0
    for index in range(5, 9):
        _, masks, _ = make_synthetic_patch(0, 1, index, touching=0.6)
        instances, classes = release_to_instances(masks)
        blobs = 0
        for label in range(1, 6):
            nuclei = [i for i, c in classes.items() if c == label]
            blobs += ndimage.label(np.isin(instances, nuclei), structure=np.ones((3, 3)))[1]
        merged += len(classes) - blobs
        _, plain, _ = make_synthetic_patch(0, 1, index)
        plain_instances, plain_classes = release_to_instances(plain)
        assert all(  # without touching, every nucleus is its own blob
            ndimage.label(plain_instances == i)[1] == 1 for i in plain_classes
        )
    assert merged >= 8  # 16 blocks x 0.6 per patch: pairs in every patch
