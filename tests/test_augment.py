"""Augmentations: each op against an independent formula, the reference order, determinism, labels."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from pannuke_hf.constants import IMAGE_MEAN, IMAGE_STD
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


def _colorsys_hsv(img: np.ndarray) -> np.ndarray:
    return np.array([[colorsys.rgb_to_hsv(*(p / 255.0)) for p in row] for row in img])


def test_hsv_conversion_matches_colorsys(image):
    hsv = rgb_to_hsv_u8(image).astype(np.float64)
    expected = _colorsys_hsv(image)
    hue_err = np.abs(hsv[..., 0] - expected[..., 0] * 180.0)
    hue_err = np.minimum(hue_err, 180.0 - hue_err)  # hue is circular
    assert hue_err.max() <= 0.5 + 1e-9
    assert np.abs(hsv[..., 1] - expected[..., 1] * 255.0).max() <= 0.5 + 1e-9
    assert np.array_equal(hsv[..., 2], expected[..., 2] * 255.0)
    assert hsv[..., 0].max() < 180


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(2)
    hsv = np.stack(
        [rng.integers(0, 180, (16, 16)), rng.integers(0, 256, (16, 16)), rng.integers(0, 256, (16, 16))],
        axis=-1,
    ).astype(np.uint8)
    rgb = hsv_u8_to_rgb(hsv).astype(np.float64)
    expected = (
        np.array([[colorsys.hsv_to_rgb(h / 180.0, s / 255.0, v / 255.0) for h, s, v in row] for row in hsv])
        * 255
    )
    assert np.abs(rgb - expected).max() <= 0.5 + 1e-3


def test_saturation_scales_s_channel(image):
    out = adjust_saturation(image, 0.6)
    before, after = _colorsys_hsv(image), _colorsys_hsv(out)
    coloured = before[..., 1] > 0.2
    ratio = after[..., 1][coloured] / before[..., 1][coloured]
    assert np.abs(ratio - 0.6).max() < 0.05  # up to 8-bit rounding
    grey = image[0, 2]
    assert np.array_equal(adjust_saturation(image, 1.5)[0, 2], grey)  # grey stays grey
    # Value (max channel) is kept up to one level of rounding.
    assert np.abs(out.max(-1).astype(int) - image.max(-1)).max() <= 1


def test_hue_rotates_in_two_degree_units():
    pure_red = np.zeros((2, 2, 3), np.uint8)
    pure_red[..., 0] = 255
    # +60 units of 2 degrees = 120 degrees: red -> green; -60 units: red -> blue.
    assert np.array_equal(adjust_hue(pure_red, 60)[0, 0], [0, 255, 0])
    assert np.array_equal(adjust_hue(pure_red, -60)[0, 0], [0, 0, 255])
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    shifted = rgb_to_hsv_u8(adjust_hue(img, 17)).astype(int)
    original = rgb_to_hsv_u8(img).astype(int)
    saturated = (original[..., 1] > 120) & (original[..., 2] > 120)
    delta = (shifted[..., 0] - original[..., 0]) % 180
    assert np.all(np.abs(delta[saturated] - 17) <= 1)


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


def test_train_transform_deterministic_per_seed_and_label_only_resized_or_flipped():
    img, lab = _example()
    batch = {"image": [img] * 12, "semantic_mask": [lab] * 12}
    a = SegmentationTransform(64, train=True, seed=5)(batch)
    b = SegmentationTransform(64, train=True, seed=5)(batch)
    c = SegmentationTransform(64, train=True, seed=6)(batch)
    assert all(torch.equal(x, y) for x, y in zip(a["pixel_values"], b["pixel_values"]))
    assert any(not torch.equal(x, y) for x, y in zip(a["pixel_values"], c["pixel_values"]))
    resized = np.asarray(lab.resize((64, 64), Image.NEAREST)).astype(np.int64)
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
    expected = normalize_to_tensor(np.asarray(img.resize((64, 64), Image.BILINEAR)))
    assert torch.equal(out["pixel_values"][0], expected)
