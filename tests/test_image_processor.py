"""UNet-FCN image processor: odd inputs to RGB, resizing, normalisation, label maps, post-processing."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import PIL.Image
import pytest
import torch
from transformers.modeling_outputs import SemanticSegmenterOutput

from pannuke_hf import constants
from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

# The reference's pre-processing, written out (mmsegmentation fcn_unet_s5-d16 PanNuke config):
# RGB mean / std on the 0-255 scale and the 512x512 input; never read from the package.
REFERENCE_MEAN = (123.675, 116.28, 103.53)
REFERENCE_STD = (58.395, 57.12, 57.375)
REFERENCE_SIZE = 512
MEAN = np.asarray(REFERENCE_MEAN, dtype=np.float32)
STD = np.asarray(REFERENCE_STD, dtype=np.float32)


def normalised(rgb) -> np.ndarray:
    """(3,) RGB on the 0-255 scale -> the expected normalised values."""
    return (np.asarray(rgb, dtype=np.float32) - MEAN) / STD


def pixel(processor, image, **kwargs) -> np.ndarray:
    """The processed (3,) value at pixel (0, 0), without resizing."""
    values = processor(image, do_resize=False, return_tensors="np", **kwargs)["pixel_values"]
    assert values.dtype == np.float32
    return values[0, :, 0, 0]


@pytest.fixture
def processor() -> UNetFCNImageProcessor:
    return UNetFCNImageProcessor()


def test_defaults_are_the_reference_preprocessing(processor):
    assert (processor.size.height, processor.size.width) == (REFERENCE_SIZE, REFERENCE_SIZE)
    assert tuple(processor.image_mean) == REFERENCE_MEAN
    assert tuple(processor.image_std) == REFERENCE_STD
    assert processor.do_resize and processor.do_normalize and not processor.do_rescale
    # The constants the package injects are the same numbers.
    assert constants.IMAGE_MEAN == REFERENCE_MEAN and constants.IMAGE_STD == REFERENCE_STD
    assert constants.REFERENCE_INPUT_SIZE == REFERENCE_SIZE
    # And the values it produces are those numbers applied: one uniform image, no resizing.
    rgb = (10, 128, 250)
    image = np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (4, 4, 3)).copy()
    expected = [(v - m) / s for v, m, s in zip(rgb, REFERENCE_MEAN, REFERENCE_STD)]
    np.testing.assert_allclose(pixel(processor, image), expected, rtol=1e-6)
    assert processor(image, return_tensors="np")["pixel_values"].shape == (1, 3, 512, 512)


def test_the_standalone_file_defaults_are_the_reference_preprocessing():
    # The file copied next to checkpoints cannot import pannuke_hf; its own defaults must be the
    # reference's too (a checkpoint loaded with trust_remote_code uses them).
    import pannuke_hf.models.unet_fcn.image_processing_unet_fcn as module

    spec = importlib.util.spec_from_file_location("standalone_image_processing_unet_fcn", module.__file__)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    assert tuple(standalone.UNetFCNImageProcessor.image_mean) == REFERENCE_MEAN
    assert tuple(standalone.UNetFCNImageProcessor.image_std) == REFERENCE_STD
    assert standalone.UNetFCNImageProcessor.size == {"height": REFERENCE_SIZE, "width": REFERENCE_SIZE}


def test_rgb_pil_numpy_and_torch_agree(processor):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    from_pil = processor(PIL.Image.fromarray(array), return_tensors="pt")["pixel_values"]
    from_numpy = processor(array, return_tensors="pt")["pixel_values"]
    from_torch_chw = processor(torch.from_numpy(array).permute(2, 0, 1), return_tensors="pt")["pixel_values"]
    from_float_0_255 = processor(array.astype(np.float64), return_tensors="pt")["pixel_values"]
    from_float_0_1 = processor(array.astype(np.float32) / 255.0, return_tensors="pt")["pixel_values"]
    assert from_pil.shape == (1, 3, 512, 512) and from_pil.dtype == torch.float32
    for other in (from_numpy, from_torch_chw, from_float_0_255, from_float_0_1):
        torch.testing.assert_close(other, from_pil, atol=1e-4, rtol=1e-5)
    unresized = processor(array, do_resize=False, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(
        unresized, (array.transpose(2, 0, 1) - MEAN[:, None, None]) / STD[:, None, None], rtol=1e-5
    )


def test_rgba_is_composited_on_white(processor):
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 10, 50)
    np.testing.assert_allclose(
        pixel(processor, PIL.Image.fromarray(rgba, "RGBA")), normalised((255, 255, 255))
    )
    rgba[..., 3] = 255
    np.testing.assert_allclose(pixel(processor, PIL.Image.fromarray(rgba, "RGBA")), normalised((200, 10, 50)))
    rgba[..., 3] = 51  # 20 % opaque
    expected = 0.2 * np.array([200, 10, 50]) + 0.8 * 255
    np.testing.assert_allclose(pixel(processor, rgba), normalised(expected), rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PIL.Image.fromarray(np.full((16, 16), 100, np.uint8), "L"),
        lambda: np.full((16, 16), 100, np.uint8),
        lambda: np.full((16, 16, 1), 100, np.uint8),
        lambda: torch.full((1, 16, 16), 100, dtype=torch.uint8),
        lambda: np.full((16, 16), 100 * 257, np.uint16),
        lambda: PIL.Image.fromarray(np.full((16, 16), 100 * 257, np.uint16)),
        lambda: PIL.Image.fromarray(np.full((16, 16), 100 * 257, np.int32), "I"),
    ],
    ids=["L", "HW-uint8", "HW1-uint8", "torch-1HW", "uint16", "PIL-I;16", "PIL-I"],
)
def test_grayscale_and_16_bit_become_gray_rgb(processor, make):
    np.testing.assert_allclose(pixel(processor, make()), normalised((100, 100, 100)), rtol=1e-5)


def test_16_bit_full_range_maps_to_255(processor):
    image = np.full((16, 16, 3), 65535, np.uint16)
    np.testing.assert_allclose(pixel(processor, image), normalised((255, 255, 255)), rtol=1e-6)


def test_16_bit_png_round_trip(processor):
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(buffer, format="PNG")
    image = PIL.Image.open(io.BytesIO(buffer.getvalue()))
    assert image.mode.startswith("I")
    np.testing.assert_allclose(pixel(processor, image), normalised((255, 255, 255)), rtol=1e-6)


def test_batches_of_mixed_inputs_are_stacked(processor):
    images = [np.zeros((20, 30, 3), np.uint8), PIL.Image.new("L", (64, 64), 255), torch.zeros(3, 8, 8)]
    out = processor(images, size={"height": 32, "width": 32}, return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 3, 32, 32)
    torch.testing.assert_close(out[1, :, 5, 5], torch.from_numpy(normalised((255, 255, 255))))
    batch = np.zeros((4, 16, 16, 3), np.uint8)
    assert processor(batch, do_resize=False, return_tensors="np")["pixel_values"].shape == (4, 3, 16, 16)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((8, 8, 3), np.nan), "image 0: contains NaN"),
        (np.full((8, 8, 3), 300.0), "image 0: values must lie in 0-255"),
        (np.full((8, 8, 3), -1, np.int16), "image 0: values must lie in 0-255"),
        (np.zeros((8, 8, 7), np.uint8), "image 0: cannot find a channel axis"),
        (np.zeros((2, 2, 8, 8, 3), np.uint8), "image 0: expected a 2-D or 3-D array"),
        ("not an image", "expected PIL images"),
    ],
)
def test_bad_images_are_refused_with_their_index(processor, image, message):
    with pytest.raises((ValueError, TypeError), match=message):
        processor(image)


def test_segmentation_maps_become_int64_labels_resized_nearest(processor):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, (256, 256)).astype(np.uint8)  # one PanNuke patch: one window
    labels[:8] = 255
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    out = processor(image, segmentation_maps=PIL.Image.fromarray(labels), return_tensors="pt")
    assert out["labels"].shape == (1, 512, 512) and out["labels"].dtype == torch.int64
    # Nearest x2 upscaling: every output pixel copies its source pixel; 255 stays 255.
    np.testing.assert_array_equal(out["labels"][0].numpy(), np.kron(labels, np.ones((2, 2), np.uint8)))
    same = processor(image, segmentation_maps=torch.from_numpy(labels.astype(np.int64)), return_tensors="pt")
    torch.testing.assert_close(same["labels"], out["labels"])
    float_maps = processor(
        image, segmentation_maps=labels.astype(np.float64), do_resize=False, return_tensors="np"
    )
    np.testing.assert_array_equal(float_maps["labels"][0], labels)


@pytest.mark.parametrize(
    ("segmentation_map", "message"),
    [
        (np.full((16, 16), 0.5), "segmentation map 0: float labels must be finite whole numbers"),
        (np.full((16, 16), -1, np.int64), "segmentation map 0: labels must be >= 0"),
        (np.zeros((1, 16, 16, 3), np.uint8), r"segmentation map 0: expected a \(H, W\) label map"),
        (np.zeros((8, 16), np.uint8), r"segmentation map 0 has size \(8, 16\), its image \(16, 16\)"),
    ],
)
def test_bad_segmentation_maps_are_refused(processor, segmentation_map, message):
    with pytest.raises(ValueError, match=message):
        processor(np.zeros((16, 16, 3), np.uint8), segmentation_maps=segmentation_map)


def test_image_and_map_counts_must_agree(processor):
    with pytest.raises(ValueError, match="2 images but 1 segmentation maps"):
        processor([np.zeros((8, 8, 3), np.uint8)] * 2, segmentation_maps=[np.zeros((8, 8), np.uint8)])


def test_post_process_semantic_segmentation(processor):
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 2] = 1.0  # image 0: class 2 everywhere
    logits[1, 1, :, :2] = 1.0  # image 1: class 1 on the left half, class 0 elsewhere
    outputs = SemanticSegmenterOutput(logits=logits)
    processor = UNetFCNImageProcessor(do_tile=False)  # one input per image: logits resized to it
    maps = processor.post_process_semantic_segmentation(outputs)
    assert isinstance(maps, list) and len(maps) == 2
    assert maps[0].shape == (4, 4) and torch.all(maps[0] == 2)
    assert torch.all(maps[1][:, :2] == 1) and torch.all(maps[1][:, 2:] == 0)
    resized = processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 6), (16, 16)])
    assert [tuple(m.shape) for m in resized] == [(8, 6), (16, 16)]
    assert torch.all(resized[0] == 2)
    assert torch.all(resized[1][:, :6] == 1) and torch.all(resized[1][:, 10:] == 0)
    with pytest.raises(ValueError, match="1 target sizes for a batch of 2"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(8, 8)])


def test_save_and_reload_keeps_settings(tmp_path):
    processor = UNetFCNImageProcessor(size={"height": 256, "width": 256})
    processor.save_pretrained(tmp_path)
    reloaded = UNetFCNImageProcessor.from_pretrained(tmp_path)
    assert (reloaded.size.height, reloaded.size.width) == (256, 256)
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        reloaded(image, return_tensors="np")["pixel_values"],
        processor(image, return_tensors="np")["pixel_values"],
    )


def test_input_data_format_resolves_ambiguous_layouts(processor):
    # (3, 4, 3): channels-last by default for numpy; channels_first when told so.
    array = np.zeros((3, 4, 3), np.uint8)
    array[0] = 255  # first row (channels-last) / first channel (channels-first)
    last = processor(array, do_resize=False, return_tensors="np")["pixel_values"][0]
    assert last.shape == (3, 3, 4)
    np.testing.assert_allclose(last[:, 0, 0], normalised((255, 255, 255)), rtol=1e-6)
    first = processor(array, do_resize=False, input_data_format="channels_first", return_tensors="np")
    first = first["pixel_values"][0]
    assert first.shape == (3, 4, 3)
    np.testing.assert_allclose(first[:, 0, 0], normalised((255, 0, 0)), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Conventions of transformers' segmentation processors (issue 19, item 13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["init", "call"])
def test_do_reduce_labels_is_accepted_and_applied(where):
    labels = np.array([[0, 1, 2], [5, 255, 3], [0, 0, 4]], np.uint8)
    image = np.zeros((3, 3, 3), np.uint8)
    if where == "init":
        out = UNetFCNImageProcessor(do_reduce_labels=True)(image, segmentation_maps=labels, do_resize=False)
    else:
        out = UNetFCNImageProcessor()(image, segmentation_maps=labels, do_resize=False, do_reduce_labels=True)
    # transformers' rule: 0 (unlabelled) -> 255 (ignored), the others minus 1, 255 stays
    np.testing.assert_array_equal(out["labels"][0], [[255, 0, 1], [4, 255, 2], [255, 255, 3]])
    plain = UNetFCNImageProcessor()(image, segmentation_maps=labels, do_resize=False)
    np.testing.assert_array_equal(plain["labels"][0], labels)


@pytest.mark.parametrize("where", ["init", "call"])
def test_shortest_edge_size_gives_square_windows(where):
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    size = {"shortest_edge": 32}
    if where == "init":
        values = UNetFCNImageProcessor(size=size)(image, return_tensors="np")["pixel_values"]
    else:
        values = UNetFCNImageProcessor()(image, size=size, return_tensors="np")["pixel_values"]
    assert values.shape == (1, 3, 32, 32)
    # the whole image (no windows) keeps its aspect ratio: shortest edge 32
    whole = UNetFCNImageProcessor(do_tile=False)(
        np.zeros((60, 90, 3), np.uint8), size=size, return_tensors="np"
    )
    assert whole["pixel_values"].shape == (1, 3, 32, 48)


def test_a_size_of_no_usable_form_is_one_line():
    with pytest.raises(
        ValueError, match=r"^size must be \{'height': H, 'width': W\}, \{'shortest_edge': S\}"
    ):
        UNetFCNImageProcessor(size={"max_height": 64, "max_width": 64})
    with pytest.raises(ValueError, match=r"^size must be"):
        UNetFCNImageProcessor()(np.zeros((8, 8, 3), np.uint8), size={"max_height": 64, "max_width": 64})


@pytest.mark.parametrize("where", ["init", "call"])
def test_integer_mean_and_std_are_accepted(where):
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    kwargs = {"image_mean": [0, 0, 0], "image_std": (1, 2, 1), "do_resize": False}
    if where == "init":
        values = UNetFCNImageProcessor(**kwargs)(image, return_tensors="np")["pixel_values"][0]
    else:
        values = UNetFCNImageProcessor()(image, return_tensors="np", **kwargs)["pixel_values"][0]
    expected = image.transpose(2, 0, 1).astype(np.float32) / np.array([1, 2, 1], np.float32)[:, None, None]
    np.testing.assert_array_equal(values, expected)


def test_another_resample_is_refused_not_ignored():
    image = np.zeros((8, 8, 3), np.uint8)
    assert UNetFCNImageProcessor(resample=PIL.Image.BILINEAR)(image, return_tensors="np")[
        "pixel_values"
    ].shape
    with pytest.raises(ValueError, match="images are resized with one rule, bilinear"):
        UNetFCNImageProcessor()(image, resample=PIL.Image.BICUBIC)
