"""Sliding-window inference (tiling, stitching, padding, odd inputs) and the `pannuke-hf predict` command."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _models import tiny_unet_fcn
from PIL import Image

from pannuke_hf import constants
from pannuke_hf.inference import plan_tiles, predict_image, predict_images, predict_logits, tile_positions

RADIUS = 2  # receptive-field radius of LocalNet: two 3x3 convs


class LocalNet(torch.nn.Module):
    """Two 3x3 convs: the logit at a pixel depends only on its 5x5 neighbourhood."""

    def __init__(self, num_labels: int = constants.NUM_LABELS, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, num_labels, 3, padding=1)
        )
        self.config = SimpleNamespace(num_labels=num_labels)

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.body(pixel_values))


def random_tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours (so labels vary in blobs, not per pixel)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    return np.array(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def direct_logits(
    net: torch.nn.Module, image: np.ndarray, scale: float = 1.0, mean=None, std=None
) -> np.ndarray:
    """The model applied once to the whole image (no tiles), at ``scale``, back at image size.

    The image is resized with the package's one rule, OpenCV INTER_LINEAR on 8 bits.
    """
    h, w = image.shape[:2]
    if scale != 1:
        image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = x / 255.0
    if mean is not None:
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = net(x).logits
    if scale != 1:
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits[0].numpy()


def interior_mask(h: int, w: int, tile: int, overlap: int, margin: int) -> np.ndarray:
    """Pixels at least ``margin`` away from every tile edge that lies inside the image, for every
    tile covering them: there each tile sees the pixel's whole receptive field."""
    plan = plan_tiles(h, w, tile, overlap)
    ok = np.ones((plan.padded_height, plan.padded_width), bool)
    for y, x in plan.corners:
        inside = np.zeros_like(ok)
        inside[y : y + tile, x : x + tile] = True
        core = np.zeros_like(ok)
        top = y + margin if y > 0 else 0
        left = x + margin if x > 0 else 0
        bottom = y + tile - margin if y + tile < h else y + tile
        right = x + tile - margin if x + tile < w else x + tile
        core[top:bottom, left:right] = True
        ok &= ~inside | core
    return ok[:h, :w]


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 31, 32, 33, 100, 257])
@pytest.mark.parametrize(("tile", "overlap"), [(32, 0), (32, 8), (32, 31), (10, 3)])
def test_tiles_cover_the_image_with_the_requested_overlap(length, tile, overlap):
    starts = tile_positions(length, tile, tile - overlap)
    covered = np.zeros(max(length, tile), int)
    for s in starts:
        assert 0 <= s and s + tile <= max(length, tile)
        covered[s : s + tile] += 1
    assert (covered[:length] >= 1).all()
    assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_plan_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 32, 32)


# ---------------------------------------------------------------------------------------------
# Stitching against a direct prediction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(150, 217, 48, 16), (97, 131, 40, 0), (64, 300, 64, 30)]
)
def test_tiled_equals_direct_prediction_away_from_tile_edges(h, w, tile, overlap):
    net = LocalNet().eval()
    image = random_tissue(h, w, seed=h)
    tiled = predict_logits(net, None, image, tile_size=tile, overlap=overlap, batch_size=3)
    direct = direct_logits(net, image)
    assert tiled.shape == direct.shape == (constants.NUM_LABELS, h, w)
    mask = interior_mask(h, w, tile, overlap, RADIUS)
    assert mask.mean() > 0.5  # the check covers most of the image
    np.testing.assert_allclose(tiled[:, mask], direct[:, mask], atol=1e-5)
    labels = predict_image(net, None, image, tile_size=tile, overlap=overlap, batch_size=3)
    assert labels.dtype == np.uint8 and labels.shape == (h, w)
    assert (labels[mask] == direct.argmax(0)[mask]).all()
    # near the tile seams the averaged logits stay close to the direct ones as well
    assert (labels == direct.argmax(0)).mean() > 0.9


def test_tiles_at_training_magnification_with_a_resizing_processor():
    """A processor resizing 256 -> 512 makes every tile reach the model at 2x, whatever the tile size."""
    net = LocalNet(seed=3).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    processor = SimpleNamespace(
        do_resize=True,
        size={"height": 2 * constants.PATCH_SIZE, "width": 2 * constants.PATCH_SIZE},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
    )
    h, w, tile, overlap = 120, 90, 40, 16
    image = random_tissue(h, w, seed=5)
    tiled = predict_logits(net, processor, image, tile_size=tile, overlap=overlap)
    direct = direct_logits(net, image, scale=2.0, mean=mean, std=std)
    # bilinear resizing adds one pixel of context on each side of the 2x receptive field
    mask = interior_mask(h, w, tile, overlap, RADIUS + 2)
    assert mask.mean() > 0.3
    np.testing.assert_allclose(tiled[:, mask], direct[:, mask], atol=1e-4)
    # the same image at scale 1 is a different prediction: the scale was really applied
    assert not np.allclose(
        predict_logits(net, processor, image, tile, overlap, scale=1.0)[:, mask], direct[:, mask]
    )


class RampNet(torch.nn.Module):
    """Logit 0 = column index inside the model input, the others 0: exposes how tiles are averaged."""

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        logits = torch.zeros(b, 2, h, w)
        logits[:, 0] = torch.arange(w, dtype=torch.float32)
        return logits


def test_overlapping_logits_are_averaged():
    h, w, tile, overlap = 20, 70, 32, 12
    got = predict_logits(RampNet(), None, np.zeros((h, w, 3), np.uint8), tile_size=tile, overlap=overlap)
    total = np.zeros(w)
    count = np.zeros(w)
    for x0 in sorted({x for _, x in plan_tiles(h, w, tile, overlap).corners}):
        total[x0 : x0 + tile] += np.arange(tile)
        count[x0 : x0 + tile] += 1
    assert count.max() > 1  # there are overlaps
    np.testing.assert_allclose(got[0], np.broadcast_to(total / count, (h, w)), atol=1e-5)


def test_batching_across_images_matches_one_by_one():
    net = LocalNet(seed=1).eval()
    images = [random_tissue(70, 50, 1), random_tissue(20, 90, 2), random_tissue(33, 33, 3)]
    one_by_one = [predict_logits(net, None, im, tile_size=32, overlap=8, batch_size=1) for im in images]
    batched = list(
        predict_images(net, None, images, tile_size=32, overlap=8, batch_size=5, return_logits=True)
    )
    assert len(batched) == 3
    for a, b in zip(one_by_one, batched):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Odd inputs
# ---------------------------------------------------------------------------------------------


def test_tiny_image_is_padded_and_cropped_back():
    net = LocalNet(seed=2).eval()
    image = random_tissue(10, 7, seed=9)
    tiled = predict_logits(net, None, image, tile_size=32, overlap=8)
    assert tiled.shape == (constants.NUM_LABELS, 10, 7)
    direct = direct_logits(net, image)
    # padding is added at the bottom/right only: away from those edges the result is exact
    np.testing.assert_allclose(
        tiled[:, : 10 - RADIUS, : 7 - RADIUS], direct[:, : 10 - RADIUS, : 7 - RADIUS], atol=1e-5
    )
    single = predict_image(net, None, np.full((1, 1, 3), 120, np.uint8), tile_size=16)
    assert single.shape == (1, 1)
    # a 1x1 image is repeated to the tile (it cannot be reflected): the result is the prediction
    # of a constant 16x16 image at any of its pixels away from the borders
    constant = direct_logits(net, np.full((16, 16, 3), 120, np.uint8))
    assert single[0, 0] == constant[:, 8, 8].argmax()


def test_grey_rgba_and_16bit_inputs_match_their_rgb_equivalent():
    net = LocalNet(seed=4).eval()
    grey = random_tissue(40, 45, seed=11)[..., 0]
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    expected = predict_image(net, None, rgb, tile_size=32, overlap=8)
    assert len(np.unique(expected)) > 1  # a prediction with some structure, so equality means something
    variants = {
        "L": Image.fromarray(grey),
        "RGBA": Image.fromarray(np.concatenate([rgb, np.full((40, 45, 1), 255, np.uint8)], -1), "RGBA"),
        "16-bit": grey.astype(np.uint16) * 257,
        "I;16 PIL": Image.fromarray(grey.astype(np.uint16) * 257),
    }
    for name, variant in variants.items():
        got = predict_image(net, None, variant, tile_size=32, overlap=8)
        assert (got == expected).all(), name


class StrideNet(LocalNet):
    """Refuses inputs whose sides are not multiples of its stride; returns half-resolution logits."""

    def __init__(self):
        super().__init__(seed=6)
        self.config = SimpleNamespace(num_labels=constants.NUM_LABELS, output_stride=8)

    def forward(self, pixel_values):
        h, w = pixel_values.shape[-2:]
        if h % 8 or w % 8:
            raise AssertionError(f"input {h}x{w} is not a multiple of 8")
        return SimpleNamespace(logits=F.avg_pool2d(self.body(pixel_values), 2))


class PointStrideNet(torch.nn.Module):
    """A fixed 1x1 conv (the logits of a pixel are a known function of its colour), evaluated at half
    resolution after refusing inputs that are not multiples of its stride 8."""

    #: logits = WEIGHTS @ rgb (0-1) + BIAS, per pixel
    WEIGHTS = np.array([[4, 0, 0], [0, 4, 0], [0, 0, 4], [2, 2, 0], [-1, 3, 1], [0, 1, -2]], dtype=np.float32)
    BIAS = np.array([0.1, -0.2, 0.3, 0.0, 0.5, -0.4], dtype=np.float32)

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, constants.NUM_LABELS, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(self.WEIGHTS)[:, :, None, None])
            self.conv.bias.copy_(torch.from_numpy(self.BIAS))
        self.config = SimpleNamespace(num_labels=constants.NUM_LABELS, output_stride=8)

    def forward(self, pixel_values):
        h, w = pixel_values.shape[-2:]
        if h % 8 or w % 8:
            raise AssertionError(f"input {h}x{w} is not a multiple of 8")
        return SimpleNamespace(logits=F.avg_pool2d(self.conv(pixel_values), 2))


def test_inputs_padded_to_the_model_stride_and_logits_resized():
    net = StrideNet().eval()
    labels = predict_image(net, None, random_tissue(45, 61, seed=2), tile_size=27, overlap=5)
    assert labels.shape == (45, 61)
    assert labels.max() < constants.NUM_LABELS


def test_stride_padding_and_resizing_give_the_known_logits():
    """Two colour halves through a model whose logits are known per colour: away from the colour
    edge (where the half-resolution output blurs) every stitched logit is exactly the expected one,
    so tiles, stride padding (bottom/right) and the crop back are aligned."""
    left, right = np.array([200, 30, 90]), np.array([20, 180, 240])
    image = np.zeros((45, 61, 3), np.uint8)
    image[:, :30], image[:, 30:] = left, right
    got = predict_logits(PointStrideNet().eval(), None, image, tile_size=27, overlap=5)
    expect_left = PointStrideNet.WEIGHTS @ (left / 255.0) + PointStrideNet.BIAS
    expect_right = PointStrideNet.WEIGHTS @ (right / 255.0) + PointStrideNet.BIAS
    np.testing.assert_allclose(
        got[:, :, :26], np.broadcast_to(expect_left[:, None, None], (6, 45, 26)), atol=1e-5
    )
    np.testing.assert_allclose(
        got[:, :, 34:], np.broadcast_to(expect_right[:, None, None], (6, 45, 27)), atol=1e-5
    )
    single = predict_logits(PointStrideNet().eval(), None, np.full((1, 1, 3), 120, np.uint8), tile_size=16)
    np.testing.assert_allclose(
        single[:, 0, 0], PointStrideNet.WEIGHTS @ np.full(3, 120 / 255.0) + PointStrideNet.BIAS, atol=1e-5
    )


def test_bad_pixels_raise_with_a_clear_message():
    bad = np.zeros((20, 20, 3))
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite pixel value at index \(3, 4, 1\)"):
        predict_image(LocalNet().eval(), None, bad, tile_size=16)


# ---------------------------------------------------------------------------------------------
# The package's UNet-FCN and image processor
# ---------------------------------------------------------------------------------------------


def test_unet_fcn_tiled_equals_direct_processor_prediction():
    """Tiles through the real processor (256 -> 512 scale) agree with the processor + model applied
    to the whole image at the same scale, away from tile edges."""
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    model, processor = tiny_unet_fcn(), UNetFCNImageProcessor()
    h, w, tile, overlap = 150, 170, 64, 24
    image = random_tissue(h, w, seed=1)
    tiled = predict_logits(model, processor, image, tile_size=tile, overlap=overlap)
    inputs = processor(image, size={"height": 2 * h, "width": 2 * w}, do_tile=False, return_tensors="pt")
    with torch.no_grad():
        direct = model(**inputs).logits
    direct = F.interpolate(direct, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
    assert len(np.unique(direct.argmax(0))) >= 3
    mask = interior_mask(h, w, tile, overlap, margin=6)
    assert mask.mean() > 0.5
    np.testing.assert_allclose(tiled[:, mask], direct[:, mask], atol=1e-4 * np.abs(direct).max())
    assert (tiled.argmax(0) == direct.argmax(0)).mean() > 0.9


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    path = tmp_path_factory.mktemp("ckpt")
    tiny_unet_fcn(seed=7).save_pretrained(path)
    UNetFCNImageProcessor().save_pretrained(path)
    return path


@pytest.fixture
def input_tree(tmp_path):
    """A folder of odd images plus one broken file; returns (root, {relative name: rgb array})."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    rgb = random_tissue(200, 170, seed=1)  # larger than the 96-pixel tiles used below: tiled
    Image.fromarray(rgb).save(root / "large.png")
    grey = random_tissue(64, 80, seed=2)[..., 0]
    Image.fromarray(grey).save(root / "sub" / "grey.jpg", quality=95)
    sixteen = grey.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(root / "sub" / "deep.tif")
    rgba = np.concatenate([random_tissue(50, 40, seed=3), np.full((50, 40, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(random_tissue(17, 9, seed=4)).save(root / "tiny.png")  # smaller than a tile
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def read_labels(path):
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.array(im)


def test_predict_command_writes_labels_overlays_and_counts(checkpoint, input_tree, tmp_path, capsys):
    from pannuke_hf.commands.predict import main
    from pannuke_hf.images import read_image
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    out = tmp_path / "out"
    tiling = ["--tile-size", "96", "--overlap", "32"]  # smaller tiles than the default 256 keep the test fast
    rc = main(["--model", str(checkpoint), str(input_tree), "--out", str(out), "--batch-size", "3", *tiling])
    err = capsys.readouterr().err
    assert rc == 1  # the broken file makes the run fail at the end ...
    assert "broken.png" in err and "cannot read image" in err
    names = ["alpha", "large", "sub/deep", "sub/grey", "tiny"]  # ... but every other file was written
    for name in names:
        assert (out / f"{name}_labels.png").is_file() and (out / f"{name}_overlay.png").is_file(), name
    assert not (out / "broken_labels.png").exists() and not (out / "notes_labels.png").exists()

    with open(out / "class_counts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-constants.NUM_LABELS :] == list(constants.CLASS_NAMES)
    assert sorted(r["name"] for r in rows) == names

    model, processor = tiny_unet_fcn(seed=7), UNetFCNImageProcessor()
    palette = np.asarray(constants.PALETTE, dtype=np.float64)
    for row in rows:
        labels = read_labels(out / f"{row['name']}_labels.png")
        image = read_image(input_tree / row["image"].split(str(input_tree) + "/")[1])
        assert labels.shape == image.shape[:2] == (int(row["height"]), int(row["width"]))
        # the CSV counts are the label PNG's counts
        counts = np.bincount(labels.ravel(), minlength=constants.NUM_LABELS)
        assert [int(row[c]) for c in constants.CLASS_NAMES] == counts.tolist()
        # the labels are the library's prediction of the same image
        assert (labels == predict_image(model, processor, image, tile_size=96, overlap=32)).all(), row["name"]
        # the overlay blends the package palette at alpha 0.5 over nuclei, background untouched
        with Image.open(out / f"{row['name']}_overlay.png") as im:
            ov = np.asarray(im.convert("RGB")).astype(np.float64)
        fg = labels > 0
        expected = 0.5 * image.astype(np.float64) + 0.5 * palette[labels]
        assert np.abs(ov[fg] - expected[fg]).max() <= 0.5 + 1e-9
        assert (ov[~fg] == image[~fg]).all()
    large = read_labels(out / "large_labels.png")
    assert len(np.unique(large)) >= 3  # the check above compared a non-trivial prediction


def test_predict_command_all_good_and_missing_inputs(checkpoint, input_tree, tmp_path, capsys):
    from pannuke_hf.commands.predict import main

    out = tmp_path / "out"
    good = [str(input_tree / "tiny.png"), str(input_tree / "sub" / "grey.jpg")]
    assert (
        main(["--model", str(checkpoint), *good, "--out", str(out), "--tile-size", "32", "--overlap", "8"])
        == 0
    )
    assert (out / "tiny_labels.png").is_file() and (out / "grey_labels.png").is_file()
    rc = main(["--model", str(checkpoint), str(tmp_path / "nope.png"), good[0], "--out", str(out)])
    assert rc == 1
    assert "nope.png: no such file or folder" in capsys.readouterr().err


def test_predict_command_bad_model_path_and_options(input_tree, tmp_path, capsys):
    from pannuke_hf.commands.predict import main

    image = str(input_tree / "tiny.png")
    assert main(["--model", "x", image, "--out", str(tmp_path), "--tile-size", "64", "--overlap", "64"]) == 2
    assert "--overlap" in capsys.readouterr().err

    rc = main(
        ["--model", str(tmp_path / "no_model"), str(input_tree / "tiny.png"), "--out", str(tmp_path / "o")]
    )
    assert rc == 1  # a data error (pannuke_hf.errors)
    err = capsys.readouterr().err
    assert "--model" in err and "no_model" in err and "no such folder" in err


@pytest.mark.parametrize("input_size", [128, 512])
def test_one_patch_matches_the_processor_and_model(input_size):
    """A 256-pixel patch (one tile) gives what the image processor + model give (shrinking is
    antialiased like the processor's PIL resize, enlarging is plain bilinear)."""
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    model = tiny_unet_fcn(seed=3)
    processor = UNetFCNImageProcessor(size={"height": input_size, "width": input_size})
    image = random_tissue(constants.PATCH_SIZE, constants.PATCH_SIZE, seed=8)
    ours = predict_logits(model, processor, image)
    with torch.no_grad():
        reference = model(**processor(image, return_tensors="pt")).logits
    reference = F.interpolate(reference, size=image.shape[:2], mode="bilinear", align_corners=False)[
        0
    ].numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4 * np.abs(reference).max())


# ---------------------------------------------------------------------------------------------
# Nuclei: tiled instance prediction and `predict --instances` / `--format pannuke`
# ---------------------------------------------------------------------------------------------

RED, BLUE, BACKGROUND = (255, 0, 0), (0, 0, 255), (150, 230, 150)


class ColourNet(torch.nn.Module):
    """Pointwise (1x1) model with known output: red pixels are neoplastic (1), blue ones connective
    (3), the rest background. With ``hv=True`` it is a distance-map model reading its nucleus map
    from red and its horizontal / vertical maps from the green / blue channels (value = 2 x - 1)."""

    def __init__(self, hv: bool = False):
        super().__init__()
        self.hv = hv
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(num_labels=constants.NUM_LABELS, id2label=dict(constants.ID2LABEL))

    def forward(self, pixel_values):
        r, g, b = pixel_values[:, 0:1], pixel_values[:, 1:2], pixel_values[:, 2:3]
        zero = torch.zeros_like(r) - 10
        if self.hv:
            logits = torch.cat([10 * (1 - r), 10 * r, zero, zero, zero, zero], 1)
            nuclei = torch.cat([10 * (1 - r), 10 * r], 1)
            return SimpleNamespace(
                logits=logits, nuclei_logits=nuclei, hv_maps=torch.cat([2 * g - 1, 2 * b - 1], 1)
            )
        logits = torch.cat([10 * g, 10 * r, zero, 10 * b, zero, zero], 1)
        return SimpleNamespace(logits=logits)


def painted(shape, discs):
    """An image with discs ((row, col), radius, colour) on the background, and their instance map."""
    from skimage.draw import disk

    image = np.zeros((*shape, 3), np.uint8)
    image[:] = BACKGROUND
    truth = np.zeros(shape, np.int32)
    for k, (centre, radius, colour) in enumerate(discs, start=1):
        rr, cc = disk(centre, radius, shape=shape)
        image[rr, cc] = colour
        truth[rr, cc] = k
    return image, truth


def hv_image(truth):
    """Encode the distance maps of ``truth`` (from their definition) in green / blue, nuclei in red."""
    image = np.zeros((*truth.shape, 3), np.uint8)  # offsets -1 outside nuclei: must be ignored
    rows, cols = np.indices(truth.shape)
    for k in np.unique(truth[truth > 0]):
        inside = truth == k
        for channel, coords in ((1, cols), (2, rows)):
            offset = coords[inside] - coords[inside].mean()
            image[..., channel][inside] = np.round((offset / np.abs(offset).max() + 1) / 2 * 255)
    image[..., 0] = np.where(truth > 0, 255, 0)
    return image


def same_nuclei(pred: np.ndarray, truth: np.ndarray) -> bool:
    """Equal partitions up to the numbering."""
    pairs = np.unique(np.stack([pred.ravel(), truth.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(pred)) == len(np.unique(truth))


def test_nuclei_on_tile_borders_are_found_once():
    from pannuke_hf.inference import predict_instances

    tile, overlap = 96, 32  # tile starts at 0, 64, 128, ...: seams inside every overlap
    discs = [
        ((40, 96), 9, RED),  # across the right edge of the first tile
        ((96, 30), 7, BLUE),  # across the bottom edge
        ((160, 158), 10, RED),  # across both, in the overlap of four tiles
        ((20, 20), 6, BLUE),  # inside one tile
    ]
    image, truth = painted((230, 250), discs)
    calls = []
    instances, segments = predict_instances(
        ColourNet(), None, image, tile_size=tile, overlap=overlap, progress=lambda d, t: calls.append((d, t))
    )
    assert instances.dtype == np.int32 and instances.shape == truth.shape
    assert len(segments) == 4 and same_nuclei(instances, truth)
    classes = {int(truth[instances == s["id"]][0]): s["label_id"] for s in segments}
    assert classes == {1: 1, 2: 3, 3: 1, 4: 3}
    n_tiles = len(plan_tiles(230, 250, tile, overlap).corners)
    assert calls[-1] == (n_tiles, n_tiles) and len(calls) == -(-n_tiles // 8)


def test_touching_nuclei_across_a_seam_are_two_with_both_paths():
    from pannuke_hf.inference import predict_instances

    image, truth = painted((200, 200), [((60, 88), 9, RED), ((60, 104), 9, RED)])  # seam at x = 96
    instances, _ = predict_instances(ColourNet(), None, image, tile_size=96, overlap=32)
    assert instances.max() == 2
    for k in (1, 2):
        ids, counts = np.unique(instances[truth == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.9
    # distance-map model, maps stitched across tiles: one round red disc centred on the seam made of
    # two nuclei (left and right half) is one nucleus for the semantic path, two for the hv path
    _, whole = painted((200, 200), [((60, 96), 12, RED)])
    halves = np.where((whole > 0) & (np.indices(whole.shape)[1] >= 96), 2, whole)
    image = hv_image(halves)
    semantic, _ = predict_instances(
        ColourNet(), None, np.where(whole[..., None] > 0, RED, BACKGROUND).astype(np.uint8), 96, 32
    )
    assert semantic.max() == 1
    instances, segments = predict_instances(ColourNet(hv=True), None, image, tile_size=96, overlap=32)
    assert len(segments) == 2 and [s["label_id"] for s in segments] == [1, 1]
    for k in (1, 2):
        ids, counts = np.unique(instances[halves == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.9


@pytest.fixture
def colour_model(monkeypatch):
    """`pannuke-hf predict` loading the ColourNet (whose nuclei are known) for any --model."""
    import pannuke_hf.commands.predict as predict

    monkeypatch.setattr(predict, "load_model", lambda name, device: (ColourNet(), None))
    monkeypatch.setattr(predict, "check_model_source", lambda name, *args, **kwargs: None)


def test_predict_instances_command_writes_png_csv_geojson(colour_model, tmp_path, capsys):
    import json

    from pannuke_hf.commands.predict import main
    from pannuke_hf.exports import read_instance_png

    discs = [((40, 96), 9, RED), ((96, 30), 7, BLUE), ((160, 158), 10, RED), ((200, 60), 8, BLUE)]
    image, truth = painted((230, 250), discs)
    Image.fromarray(image).save(tmp_path / "large.png")
    empty, _ = painted((40, 40), [])
    Image.fromarray(empty).save(tmp_path / "empty.png")
    out = tmp_path / "out"
    argv = ["--model", "m", str(tmp_path / "large.png"), str(tmp_path / "empty.png"), "--out", str(out)]
    assert main([*argv, "--instances", "--tile-size", "96", "--overlap", "32"]) == 0
    instances = read_instance_png(out / "large_instances.png")
    with Image.open(out / "large_instances.png") as im:
        assert im.mode in ("I;16", "I")
    assert same_nuclei(instances, truth) and instances.max() == 4
    with open(out / "large_nuclei.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["id"]) for r in rows] == [1, 2, 3, 4]
    rows_by_truth = {int(truth[instances == int(r["id"])][0]): r for r in rows}
    for k, ((cy, cx), _, colour) in enumerate(discs, start=1):
        row = rows_by_truth[k]
        assert row["class"] == ("neoplastic" if colour == RED else "connective / soft tissue")
        assert int(row["area"]) == int((truth == k).sum())
        # a disc drawn around pixel (cy, cx): centroid at its pixel centre
        assert float(row["centroid_x"]) == pytest.approx(cx + 0.5, abs=0.05)
        assert float(row["centroid_y"]) == pytest.approx(cy + 0.5, abs=0.05)
    collection = json.loads((out / "large_nuclei.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 4
    names = sorted(f["properties"]["classification"]["name"] for f in collection["features"])
    assert names == ["connective / soft tissue"] * 2 + ["neoplastic"] * 2  # the CSV's names
    assert read_instance_png(out / "empty_instances.png").max() == 0
    assert json.loads((out / "empty_nuclei.geojson").read_text())["features"] == []
    with open(out / "nuclei_counts.csv", newline="") as fh:
        counts = {r["name"]: r for r in csv.DictReader(fh)}
    assert counts["large"]["nuclei"] == "4" and counts["large"]["neoplastic"] == "2"
    assert counts["large"]["connective"] == "2" and counts["empty"]["nuclei"] == "0"
    # the label maps are still written
    assert (out / "large_labels.png").is_file() and (out / "large_overlay.png").is_file()


def raw_fold(root, fold, images, masks, tissues):
    """Write a raw PanNuke fold (``Fold k/images/foldk/images.npy`` ...) and return its folder."""
    paths = constants.raw_relpaths(fold)
    for key, array in (("images", images), ("masks", masks), ("types", np.asarray(tissues))):
        path = root / paths[key]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return root / constants.fold_dir_name(fold)


def test_predict_format_pannuke_writes_the_release_array_of_a_fold(colour_model, tmp_path, capsys):
    from pannuke_hf.commands.predict import main

    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(3):
        discs = [
            ((int(y), int(x)), 8, RED if rng.random() < 0.5 else BLUE)
            for y, x in rng.uniform(20, 236, (4, 2))
        ]
        image, truth = painted((256, 256), discs)
        images.append(image.astype(np.float64))  # the release stores float64
        mask = np.zeros((256, 256, 6))
        for k, (_, _, colour) in enumerate(discs, start=1):
            mask[..., 0 if colour == RED else 2][truth == k] = k  # channel 0 neoplastic, 2 connective
        mask[..., 5] = truth == 0
        masks.append(mask)
    fold_dir = raw_fold(tmp_path / "raw", 3, np.stack(images), np.stack(masks), ["Breast", "Colon", "Breast"])
    out = tmp_path / "pred.npy"
    assert main(["--model", "m", "--fold-dir", str(fold_dir), "--format", "pannuke", "--out", str(out)]) == 0
    pred = np.load(out)
    assert pred.shape == (3, 256, 256, 6)
    for i in range(3):
        for channel in range(5):
            # the same nuclei in the same class channel as the truth (ids may differ)
            assert same_nuclei(pred[i, :, :, channel], masks[i][:, :, channel].astype(np.int64)), (i, channel)
        assert np.array_equal(pred[i, :, :, 5] == 1, masks[i][:, :, 5] == 1)
    score = pytest.importorskip("pannuke_hf.commands.score")
    assert (
        score.main(
            ["--true", str(fold_dir), "--pred", str(out), "--out", str(tmp_path / "scores"), "--no-progress"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "bPQ" in printed and "mPQ" in printed
    scores = json.loads((tmp_path / "scores" / "scores.json").read_text())
    found = [v for k, v in _flatten(scores) if k.endswith("bPQ")]
    assert found and all(v == pytest.approx(1.0, abs=1e-4) for v in found)


def _flatten(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}{k}.")
    elif isinstance(obj, (int, float)):
        yield prefix.rstrip("."), obj


def test_predict_instance_options_are_checked(colour_model, tmp_path, capsys):
    from pannuke_hf.commands.predict import main

    image, _ = painted((40, 40), [])
    Image.fromarray(image).save(tmp_path / "a.png")
    assert main(["--model", "m", "--fold-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--format pannuke" in capsys.readouterr().err
    assert (
        main(["--model", "m", str(tmp_path / "a.png"), "--format", "pannuke", "--out", str(tmp_path / "o")])
        == 2
    )
    assert ".npy" in capsys.readouterr().err
    assert (
        main(
            [
                "--model",
                "m",
                "--fold-dir",
                str(tmp_path / "none"),
                "--format",
                "pannuke",
                "--out",
                str(tmp_path / "p.npy"),
            ]
        )
        == 1  # a missing input folder: the work failed (docs/cli.md)
    )
    assert "none" in capsys.readouterr().err
    assert main(["--model", "m", "--out", str(tmp_path / "o")]) == 2
    # image files of several sizes cannot share one release array: the error names the image
    Image.fromarray(painted((50, 40), [])[0]).save(tmp_path / "b.png")
    rc = main(
        [
            "--model",
            "m",
            str(tmp_path / "a.png"),
            str(tmp_path / "b.png"),
            "--format",
            "pannuke",
            "--out",
            str(tmp_path / "p.npy"),
        ]
    )
    assert rc == 1 and "image 1 has size" in capsys.readouterr().err
    assert not (tmp_path / "p.npy").exists()
