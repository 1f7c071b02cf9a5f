"""Augmentations: each op against an independent formula, the reference order, determinism, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pannuke_hf.constants import IMAGE_MEAN, IMAGE_STD
from pannuke_hf.training import augment
from pannuke_hf.training.augment import (
    PhotometricParams,
    SegmentationTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_photometric,
    hsv_u8_to_rgb,
    normalize_to_tensor,
    resize_label,
    resize_pair,
    rgb_to_hsv_u8,
    sample_photometric_params,
)


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    img[0, :6] = [[255, 0, 1], [0, 0, 0], [10, 10, 10], [255, 255, 255], [0, 0, 255], [3, 250, 7]]
    return img


def test_brightness_and_contrast_clip_and_truncate(image):
    ref = image.astype(np.float64)
    assert np.array_equal(
        adjust_brightness(image, 20.7), np.floor(np.clip(ref + 20.7, 0, 255)).astype(np.uint8)
    )
    assert np.array_equal(
        adjust_brightness(image, -31.2), np.floor(np.clip(ref - 31.2, 0, 255)).astype(np.uint8)
    )
    assert np.array_equal(
        adjust_contrast(image, 1.37), np.floor(np.clip(ref * 1.37, 0, 255)).astype(np.uint8)
    )


# ---------------------------------------------------------------------------------------------
# OpenCV's documented 8-bit RGB <-> HSV definitions, written out here (exact, in float64)
# ---------------------------------------------------------------------------------------------


def documented_hsv(r: float, g: float, b: float) -> tuple[float, float, float]:
    """OpenCV's RGB2HSV definition, unrounded: H in half degrees [0, 180), S and V in 0-255."""
    v = max(r, g, b)
    diff = v - min(r, g, b)
    s = 255.0 * diff / v if v else 0.0
    if diff == 0:
        h = 0.0
    elif v == r:
        h = 60.0 * (g - b) / diff
    elif v == g:
        h = 120.0 + 60.0 * (b - r) / diff
    else:
        h = 240.0 + 60.0 * (r - g) / diff
    if h < 0:
        h += 360.0
    return h / 2.0, s, float(v)


def documented_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    """The standard HSV -> RGB sector formulas on 8-bit HSV (H in half degrees), unrounded."""
    hue, sat = (2.0 * h) / 60.0, s / 255.0
    sector = int(hue) % 6
    f = hue - int(hue)
    p, q, t = v * (1 - sat), v * (1 - sat * f), v * (1 - sat * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][sector]


def unambiguous_round(values) -> list[int]:
    """Round to the nearest integer, insisting that no value is near a tie (so any correct
    rounding of the definition, OpenCV's fixed-point one included, gives the same integer)."""
    out = []
    for value in values:
        frac = value - np.floor(value)
        assert abs(frac - 0.5) > 0.08, f"{value} is too close to a tie for an exact expectation"
        out.append(int(np.floor(value + 0.5)))
    return out


def hsv_exact(rgb) -> list[int]:
    return unambiguous_round(documented_hsv(*map(float, rgb)))


def rgb_exact(hsv) -> list[int]:
    return unambiguous_round(documented_rgb(*map(float, hsv)))


def trunc_u8(value: float) -> int:
    """The reference's convert(): clip to 0-255 then truncate."""
    return int(np.floor(min(max(value, 0.0), 255.0)))


#: Pixels whose HSV values are far from rounding ties (checked by unambiguous_round).
CLEAN_PIXELS = [(200, 120, 40), (255, 51, 51), (40, 200, 120), (10, 40, 250)]


def test_hsv_conversion_follows_opencv_definition(image):
    pixels = np.array([CLEAN_PIXELS], dtype=np.uint8)
    hsv = rgb_to_hsv_u8(pixels)
    for (r, g, b), got in zip(CLEAN_PIXELS, hsv[0].tolist()):
        assert got == hsv_exact((r, g, b)), (r, g, b)
    # Hand-checked: (200, 120, 40) -> H = 30 deg = 15 units, S = 255 * 160 / 200 = 204, V = 200.
    assert hsv[0, 0].tolist() == [15, 204, 200]
    # Every pixel of a random image within one unit of the definition (OpenCV's fixed-point
    # rounding may differ from exact rounding by one unit), V exact, H circular in [0, 180).
    got = rgb_to_hsv_u8(image).astype(np.float64)
    want = np.array([[documented_hsv(*map(float, p)) for p in row] for row in image])
    hue_err = np.abs(got[..., 0] - want[..., 0])
    hue_err = np.minimum(hue_err, 180.0 - hue_err)
    assert hue_err.max() <= 1 and np.abs(got[..., 1] - want[..., 1]).max() <= 1
    assert np.array_equal(got[..., 2], want[..., 2]) and got[..., 0].max() < 180


def test_hsv_to_rgb_follows_definition():
    exact = [(0, 255, 255), (60, 255, 255), (120, 255, 255), (15, 102, 200), (162, 204, 255), (0, 142, 255)]
    rgb = hsv_u8_to_rgb(np.array([exact], dtype=np.uint8))
    for hsv, got in zip(exact, rgb[0].tolist()):
        assert got == rgb_exact(hsv), hsv
    assert rgb[0, :3].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert rgb[0, 3].tolist() == [200, 160, 120]
    rng = np.random.default_rng(2)
    hsv = np.stack(
        [rng.integers(0, 180, (16, 16)), rng.integers(0, 256, (16, 16)), rng.integers(0, 256, (16, 16))],
        axis=-1,
    ).astype(np.uint8)
    want = np.array([[documented_rgb(*map(float, p)) for p in row] for row in hsv])
    assert np.abs(hsv_u8_to_rgb(hsv).astype(np.float64) - want).max() <= 1


def _expected_saturation(rgb, alpha: float) -> list[int]:
    h, s, v = hsv_exact(rgb)
    return rgb_exact((h, trunc_u8(s * alpha), v))


def _expected_hue(rgb, delta: int) -> list[int]:
    h, s, v = hsv_exact(rgb)
    return rgb_exact(((h + delta) % 180, s, v))


@pytest.mark.parametrize("alpha", [0.5, 0.7, 1.37])
def test_saturation_exact_for_given_draw(alpha):
    pixels = np.array([CLEAN_PIXELS[:2]], dtype=np.uint8)
    out = adjust_saturation(pixels, alpha)[0].tolist()
    assert out == [_expected_saturation(p, alpha) for p in CLEAN_PIXELS[:2]]
    if alpha == 0.7:
        # S = 204 * 0.7 = 142.8 is truncated to 142 (rounding would give 143 -> G = B = 112).
        assert out[1] == [255, 113, 113]
    grey = np.full((1, 1, 3), 77, np.uint8)
    assert np.array_equal(adjust_saturation(grey, alpha), grey)  # grey stays grey


@pytest.mark.parametrize("delta", [15, -18, 17, 0])
def test_hue_exact_for_given_draw(delta):
    pixels = np.array([CLEAN_PIXELS[:2]], dtype=np.uint8)
    out = adjust_hue(pixels, delta)[0].tolist()
    assert out == [_expected_hue(p, delta) for p in CLEAN_PIXELS[:2]]
    if delta == -18:
        # H = 0 - 18 wraps to 162 units (324 degrees): sector 5, B = 255 * (1 - 0.8 * 0.4) = 173.4.
        assert out[1] == [255, 51, 173]


def test_hue_rotates_in_two_degree_units():
    pure_red = np.zeros((2, 2, 3), np.uint8)
    pure_red[..., 0] = 255
    # +60 units of 2 degrees = 120 degrees: red -> green; -60 units: red -> blue.
    assert np.array_equal(adjust_hue(pure_red, 60)[0, 0], [0, 255, 0])
    assert np.array_equal(adjust_hue(pure_red, -60)[0, 0], [0, 0, 255])


def test_full_distortion_exact_for_given_draws():
    """brightness -> (contrast first?) -> saturation -> hue -> (contrast last?), each truncated."""
    pixels = [(220, 140, 60), (255, 51, 51), (90, 90, 90)]
    image = np.array([pixels], dtype=np.uint8)
    for contrast_first in (False, True):
        params = PhotometricParams(
            brightness=-20.0, contrast_first=contrast_first, contrast=1.1, saturation=0.5, hue=15
        )
        expected = []
        for rgb in pixels:
            px = [trunc_u8(c - 20.0) for c in rgb]
            if contrast_first:
                px = [trunc_u8(c * np.float32(1.1)) for c in px]
            px = _expected_saturation(px, 0.5)
            px = _expected_hue(px, 15)
            if not contrast_first:
                px = [trunc_u8(c * np.float32(1.1)) for c in px]
            expected.append(px)
        assert apply_photometric(image, params)[0].tolist() == expected, contrast_first
    # Worked by hand for contrast last: (220, 140, 60) - 20 = (200, 120, 40); S 204 -> 102 gives
    # (200, 160, 120); H 15 -> 30 units (60 deg) gives (200, 200, 120); x 1.1 = (220, 220, 132).
    assert expected[0] == [220, 220, 132] or contrast_first


def test_params_follow_reference_probabilities_and_ranges():
    rng = np.random.default_rng(0)
    draws = [sample_photometric_params(rng) for _ in range(4000)]
    for name in ("brightness", "contrast", "saturation", "hue"):
        applied = [getattr(p, name) for p in draws if getattr(p, name) is not None]
        assert 0.46 < len(applied) / len(draws) < 0.54, name
    assert 0.46 < np.mean([p.contrast_first for p in draws]) < 0.54
    brightness = [p.brightness for p in draws if p.brightness is not None]
    assert -32 <= min(brightness) < -30 and 30 < max(brightness) <= 32
    for name in ("contrast", "saturation"):
        values = [getattr(p, name) for p in draws if getattr(p, name) is not None]
        assert 0.5 <= min(values) < 0.52 and 1.48 < max(values) <= 1.5
    hues = {p.hue for p in draws if p.hue is not None}
    assert hues == set(range(-18, 18))  # integer shifts, high end excluded like the reference's randint


@pytest.mark.parametrize("contrast_first", [True, False])
def test_apply_order(image, contrast_first):
    params = PhotometricParams(
        brightness=-12.5, contrast_first=contrast_first, contrast=1.4, saturation=0.7, hue=9
    )
    expected = adjust_brightness(image, -12.5)
    if contrast_first:
        expected = adjust_contrast(expected, 1.4)
    expected = adjust_hue(adjust_saturation(expected, 0.7), 9)
    if not contrast_first:
        expected = adjust_contrast(expected, 1.4)
    assert np.array_equal(apply_photometric(image, params), expected)
    other = PhotometricParams(-12.5, not contrast_first, 1.4, 0.7, 9)
    assert not np.array_equal(apply_photometric(image, other), expected)  # the order matters


def test_normalize_matches_formula(image):
    tensor = normalize_to_tensor(image)
    expected = (image.astype(np.float64) - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    assert tensor.shape == (3, 24, 20) and tensor.dtype == torch.float32
    assert np.allclose(tensor.numpy(), expected.transpose(2, 0, 1), atol=1e-5)


def _example(seed: int = 0) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    lab = np.zeros((32, 32), np.uint8)
    lab[4:10, 2:8] = 3  # asymmetric blob
    lab[20:30, 25:31] = 5
    return img, Image.fromarray(lab)


def nearest_resize(array: np.ndarray, size: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST (mmcv 'nearest'): output pixel x takes source floor(x * in / out)."""
    rows = np.floor(np.arange(size) * array.shape[0] / size).astype(int)
    cols = np.floor(np.arange(size) * array.shape[1] / size).astype(int)
    return array[rows][:, cols]


def bilinear_upsample_2x(array: np.ndarray) -> np.ndarray:
    """Half-pixel-centred bilinear (OpenCV INTER_LINEAR, mmcv 'bilinear') for an exact 2x upsample:
    source coordinate (x + 0.5) / 2 - 0.5, clamped at the borders. Unrounded float64."""

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, src - lo

    a = array.astype(np.float64)
    r0, r1, fy = axis(a.shape[0])
    c0, c1, fx = axis(a.shape[1])
    fy, fx = fy[:, None, None], fx[None, :, None]
    top = a[r0][:, c0] * (1 - fx) + a[r0][:, c1] * fx
    bottom = a[r1][:, c0] * (1 - fx) + a[r1][:, c1] * fx
    return top * (1 - fy) + bottom * fy


def assert_bilinear(got: np.ndarray, source: np.ndarray) -> None:
    """``got`` is the 2x bilinear upsample of ``source``: within OpenCV's fixed-point rounding
    (under one level) everywhere, and exact wherever the definition gives a whole number."""
    exact = bilinear_upsample_2x(source)
    assert got.dtype == np.uint8 and got.shape == exact.shape
    assert np.abs(got - exact).max() < 0.75
    whole = exact == np.floor(exact)
    assert whole.sum() > exact.size // 20 and np.array_equal(got[whole], exact[whole])


def to_uint8(pixel_values: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of a (3, H, W) tensor back to the (H, W, 3) uint8 image."""
    image = pixel_values.numpy().transpose(1, 2, 0) * np.array(IMAGE_STD) + np.array(IMAGE_MEAN)
    restored = np.rint(image)
    assert np.abs(image - restored).max() < 1e-3
    return restored.astype(np.uint8)


def test_resize_is_opencv_bilinear_image_and_nearest_label():
    img, lab = _example()
    image, label = resize_pair(img, lab, 64)
    assert_bilinear(image, np.asarray(img))
    assert np.array_equal(label, nearest_resize(np.asarray(lab), 64))
    # A non-integer ratio: OpenCV's nearest takes floor(x * 32 / 48), not PIL's centred pixel.
    ramp = np.tile(np.arange(32, dtype=np.uint8), (32, 1))
    assert resize_label(ramp, 48)[0].tolist() == [int(x * 32 / 48) for x in range(48)]
    instances = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    resized = resize_label(instances, 48)
    assert resized.dtype == np.uint16 and np.array_equal(resized, nearest_resize(instances, 48))


def test_train_transform_deterministic_per_seed_and_label_only_resized_or_flipped():
    img, lab = _example()
    batch = {"image": [img] * 12, "semantic_mask": [lab] * 12}
    a = SegmentationTransform(64, train=True, seed=5)(batch)
    b = SegmentationTransform(64, train=True, seed=5)(batch)
    c = SegmentationTransform(64, train=True, seed=6)(batch)
    assert all(torch.equal(x, y) for x, y in zip(a["pixel_values"], b["pixel_values"]))
    assert any(not torch.equal(x, y) for x, y in zip(a["pixel_values"], c["pixel_values"]))
    resized = nearest_resize(np.asarray(lab), 64).astype(np.int64)
    flips = 0
    for labels in a["labels"]:
        labels = labels.numpy()
        assert labels.shape == (64, 64) and labels.dtype == np.int64
        if np.array_equal(labels, resized[:, ::-1]):
            flips += 1
        else:
            assert np.array_equal(labels, resized)
    assert 0 < flips < 12


def test_flip_moves_image_and_label_together():
    img, lab = _example()
    transform = SegmentationTransform(32, train=True, seed=0, photometric=False, flip_prob=1.0)
    pixel_values, labels = transform.transform_one(img, lab)
    assert np.array_equal(labels.numpy(), np.asarray(lab)[:, ::-1])
    expected = normalize_to_tensor(np.asarray(img)[:, ::-1])
    assert torch.equal(pixel_values, expected)


def test_eval_transform_keeps_label_resolution():
    img, lab = _example()
    out = SegmentationTransform(64, train=False)({"image": [img], "semantic_mask": [lab]})
    assert out["pixel_values"][0].shape == (3, 64, 64)
    assert np.array_equal(out["labels"][0].numpy(), np.asarray(lab))
    assert_bilinear(to_uint8(out["pixel_values"][0]), np.asarray(img))


# ---------------------------------------------------------------------------------------------
# The training transform applies the distortion (issue: skipping it must turn a test red)
# ---------------------------------------------------------------------------------------------


def test_training_transform_applies_given_draws_exactly(monkeypatch):
    pixels = [(220, 140, 60), (255, 51, 51)]
    image = np.array([pixels * 2] * 4, dtype=np.uint8)  # (4, 4, 3), no resize at size 4
    params = PhotometricParams(brightness=-20.0, contrast_first=False, contrast=1.1, saturation=0.5, hue=15)
    monkeypatch.setattr(augment, "sample_photometric_params", lambda rng: params)
    transform = SegmentationTransform(4, train=True, flip_prob=0.0)
    out = to_uint8(transform.transform_example(image, key=(0, 0))["pixel_values"])
    # From the definitions (see test_full_distortion_exact_for_given_draws): contrast last.
    expected_first = [220, 220, 132]
    px = _expected_hue(_expected_saturation([trunc_u8(c - 20.0) for c in pixels[1]], 0.5), 15)
    expected_second = [trunc_u8(c * np.float32(1.1)) for c in px]
    assert out[0, 0].tolist() == expected_first and out[0, 1].tolist() == expected_second
    assert np.array_equal(out, np.tile(out[:1, :2], (4, 2, 1)))  # same draws for every pixel


def _grey_and_colour_image() -> np.ndarray:
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (128, 128, 128)  # grey: only brightness and contrast can change it
    image[0, 1] = (200, 120, 40)
    image[1, 0] = (40, 200, 120)
    image[1, 1] = (60, 90, 210)
    return image


def test_training_transform_distortion_probabilities_over_many_draws():
    """Each op p=0.5: an image is left untouched ~1/16 of the time; its grey pixel (changed by
    brightness or contrast only) ~1/4 of the time."""
    image = _grey_and_colour_image()
    transform = SegmentationTransform(2, train=True, flip_prob=0.0, seed=3)
    n = 3000
    untouched = grey_kept = 0
    for index in range(n):
        out = to_uint8(transform.transform_example(image, key=(0, index))["pixel_values"])
        untouched += np.array_equal(out, image)
        grey_kept += np.array_equal(out[0, 0], image[0, 0])
    # Small extra mass: brightness deltas in [0, 1) and hue shift 0 change nothing.
    assert 0.045 < untouched / n < 0.09, untouched / n
    assert 0.22 < grey_kept / n < 0.30, grey_kept / n


def test_flip_probability_over_many_draws():
    image = _grey_and_colour_image()
    label = np.array([[1, 2], [3, 4]], np.uint8)
    transform = SegmentationTransform(2, train=True, photometric=False, seed=1)
    flips = sum(
        np.array_equal(
            transform.transform_example(image, label, key=(0, i))["labels"].numpy(), label[:, ::-1]
        )
        for i in range(2000)
    )
    assert 0.46 < flips / 2000 < 0.54


def test_evaluation_transform_never_distorts():
    img, lab = _example()
    transform = SegmentationTransform(64, train=False, seed=0)
    reference = to_uint8(transform.transform_example(img, lab, key=(0, 0))["pixel_values"])
    assert_bilinear(reference, np.asarray(img))
    for index in range(1, 50):
        out = transform.transform_example(img, lab, key=(index, index))
        assert np.array_equal(to_uint8(out["pixel_values"]), reference)
        assert np.array_equal(out["labels"].numpy(), np.asarray(lab))


# ---------------------------------------------------------------------------------------------
# Instance maps carried through the geometry (keep_instances)
# ---------------------------------------------------------------------------------------------


def test_instance_mask_follows_label_geometry():
    img, lab = _example()
    instances = np.zeros((32, 32), np.uint16)
    instances[4:10, 2:8] = 300  # ids above 255 survive
    instances[20:30, 25:31] = 65535
    inst_img = Image.fromarray(instances)
    batch = {"image": [img] * 8, "semantic_mask": [lab] * 8, "instance_mask": [inst_img] * 8}
    out = SegmentationTransform(48, train=True, seed=2, keep_instances=True)(batch)
    resized_lab = nearest_resize(np.asarray(lab), 48)
    resized_inst = nearest_resize(instances, 48).astype(np.int64)
    flips = 0
    for labels, inst in zip(out["labels"], out["instance_mask"]):
        assert inst.dtype == torch.int64 and inst.shape == (48, 48)
        flipped = np.array_equal(labels.numpy(), resized_lab[:, ::-1])
        flips += flipped
        assert np.array_equal(inst.numpy(), resized_inst[:, ::-1] if flipped else resized_inst)
    assert 0 < flips < 8
    # Not asked for: not returned (and not needed in the batch).
    plain = SegmentationTransform(48, train=True, seed=2)(batch)
    assert set(plain) == {"pixel_values", "labels"}
    # Evaluation keeps it at the stored resolution, like the label.
    evaluated = SegmentationTransform(48, train=False, keep_instances=True)(batch)
    assert np.array_equal(evaluated["instance_mask"][0].numpy(), instances.astype(np.int64))
