"""Regions of slides with `pannuke-hf predict`: --offset, --mpp, areas in µm², large images.

Issue 19, items 4 and 8: a region's nuclei land at their place in the slide (``--offset``), an
image at another pixel size reaches the model at its training pixel size (``--mpp``, against the
model's ``config.mpp``), the CSV gives areas in µm², and images above Pillow's
decompression-bomb limit are read when their memory fits, refused in one line otherwise.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from _models import tiny_unet_fcn
from PIL import Image
from skimage.draw import disk

from pannuke_hf import images as images_module
from pannuke_hf.commands.predict import main
from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor


def region(seed: int = 0, shape=(200, 240)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = shape
    coarse = rng.integers(120, 256, size=(h // 16 + 2, w // 16 + 2, 3)).astype(np.uint8)
    image = np.array(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    for _ in range(30):
        centre = (int(rng.integers(0, h)), int(rng.integers(0, w)))
        image[disk(centre, int(rng.integers(4, 9)), shape=(h, w))] = rng.integers(0, 120, size=3)
    return image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_unet_fcn(seed=4)
    model.save_pretrained(folder)
    UNetFCNImageProcessor().save_pretrained(folder)
    return folder, model


def run(folder, image_path, out, *extra) -> int:
    argv = ["--model", str(folder), str(image_path), "--out", str(out), "--device", "cpu", "--no-progress"]
    return main([*argv, *extra])


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_offset_moves_csv_and_geojson_coordinates(checkpoint, tmp_path):
    folder, _ = checkpoint
    Image.fromarray(region()).save(tmp_path / "r.png")
    assert run(folder, tmp_path / "r.png", tmp_path / "plain", "--instances") == 0
    assert run(folder, tmp_path / "r.png", tmp_path / "moved", "--instances", "--offset", "1000", "2000") == 0
    plain, moved = rows(tmp_path / "plain" / "r_nuclei.csv"), rows(tmp_path / "moved" / "r_nuclei.csv")
    assert len(plain) == len(moved) >= 3
    for a, b in zip(plain, moved):
        assert float(b["centroid_x"]) == pytest.approx(float(a["centroid_x"]) + 1000)
        assert float(b["centroid_y"]) == pytest.approx(float(a["centroid_y"]) + 2000)
        assert (int(b["bbox_x0"]), int(b["bbox_y1"])) == (int(a["bbox_x0"]) + 1000, int(a["bbox_y1"]) + 2000)
        assert a["area"] == b["area"]
    first = [json.loads((tmp_path / d / "r_nuclei.geojson").read_text()) for d in ("plain", "moved")]
    ring_a = np.asarray(first[0]["features"][0]["geometry"]["coordinates"][0])
    ring_b = np.asarray(first[1]["features"][0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring_b, ring_a + [1000, 2000])
    # the instance PNG stays on the image's own grid
    assert (tmp_path / "moved" / "r_instances.png").read_bytes() == (
        tmp_path / "plain" / "r_instances.png"
    ).read_bytes()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--offset", "5", "5"], "use it with --instances"),
        (["--instances", "--offset", "5", "5"], "give one image, got 2"),
        (["--instances", "--mpp", "0.5", "--scale", "2"], "give --mpp or --scale, not both"),
        (["--instances", "--mpp", "0"], "must be > 0"),
    ],
)
def test_region_options_misuse_is_a_usage_error(checkpoint, tmp_path, capsys, extra, message):
    folder, _ = checkpoint
    (tmp_path / "in").mkdir()
    Image.fromarray(region()).save(tmp_path / "in" / "r.png")
    target = tmp_path / "in" / "r.png"
    if "give one image" in message:
        Image.fromarray(region(1)).save(tmp_path / "in" / "s.png")
        target = tmp_path / "in"  # a folder of two images
    assert run(folder, target, tmp_path / "o", *extra) == 2
    assert message in capsys.readouterr().err


def test_mpp_rescales_to_the_models_pixel_size_and_areas_are_in_square_microns(checkpoint, tmp_path):
    from pannuke_hf.inference import predict_instances

    folder, model = checkpoint
    image = region(2)
    Image.fromarray(image).save(tmp_path / "r.png")
    assert run(folder, tmp_path / "r.png", tmp_path / "at20x", "--instances", "--mpp", "0.5") == 0
    found = rows(tmp_path / "at20x" / "r_nuclei.csv")
    # 0.5 µm pixels: the image is enlarged 2x on top of the processor's 2x, 128-pixel windows
    # cover a training patch's tissue, and the smallest nucleus kept is 3 pixels (10 at 0.25 µm)
    processor = UNetFCNImageProcessor.from_pretrained(folder)
    instances, segments = predict_instances(model, processor, image, tile_size=128, scale=4.0, min_size=3)
    assert len(found) == len(segments) >= 3
    areas = [int((instances == s["id"]).sum()) for s in segments]
    assert [int(r["area"]) for r in found] == areas
    assert [float(r["area_um2"]) for r in found] == pytest.approx([a * 0.25 for a in areas])
    # without --mpp: the model's pixel size (0.25 µm): area_um2 = area / 16
    assert run(folder, tmp_path / "r.png", tmp_path / "at40x", "--instances") == 0
    for r in rows(tmp_path / "at40x" / "r_nuclei.csv"):
        assert float(r["area_um2"]) == pytest.approx(int(r["area"]) * 0.0625)


def test_mpp_is_read_against_the_models_config(checkpoint, tmp_path):
    """A model trained at 0.5 µm / pixel (config.mpp) predicts a 0.5 µm image as it is."""
    folder, model = checkpoint
    trained_at_20x = tmp_path / "model20x"
    before = getattr(model.config, "mpp", None)
    model.config.mpp = 0.5
    try:
        model.save_pretrained(trained_at_20x)
    finally:
        if before is None:
            del model.config.mpp
        else:
            model.config.mpp = before
    UNetFCNImageProcessor().save_pretrained(trained_at_20x)
    Image.fromarray(region(3)).save(tmp_path / "r.png")
    assert run(trained_at_20x, tmp_path / "r.png", tmp_path / "a", "--instances", "--mpp", "0.5") == 0
    assert run(trained_at_20x, tmp_path / "r.png", tmp_path / "b", "--instances", "--min-size", "10") == 0
    assert (tmp_path / "a" / "r_instances.png").read_bytes() == (
        tmp_path / "b" / "r_instances.png"
    ).read_bytes()


# ---------------------------------------------------------------------------------------------
# Images above Pillow's decompression-bomb limit (issue 19, item 4)
# ---------------------------------------------------------------------------------------------


def test_images_over_pillows_limit_are_read_when_their_memory_fits(tmp_path, monkeypatch):
    image = region(4, shape=(120, 150))
    Image.fromarray(image).save(tmp_path / "big.png")
    # 18,000 pixels is over twice this limit: Pillow alone raises DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 8_000)
    with pytest.raises(Image.DecompressionBombError), Image.open(tmp_path / "big.png") as im:
        im.load()
    np.testing.assert_array_equal(images_module.read_image(tmp_path / "big.png"), image)
    assert Image.MAX_IMAGE_PIXELS == 8_000  # Pillow's own limit is left as it was


def test_images_whose_memory_does_not_fit_are_refused_in_one_line(tmp_path, monkeypatch, capsys, checkpoint):
    Image.fromarray(region(5, shape=(120, 150))).save(tmp_path / "big.png")
    needed = images_module.image_memory_bytes(120, 150, channels=7)
    monkeypatch.setattr(images_module, "available_memory_bytes", lambda: needed // 2)
    with pytest.raises(images_module.ImageTooLargeError, match=r"150 x 120 pixels needs .* GiB") as err:
        images_module.read_image(tmp_path / "big.png")
    assert "\n" not in str(err.value) and "pannuke-hf slide" in str(err.value)
    # an explicit limit, and the command: one error line naming the file, exit 1
    with pytest.raises(images_module.ImageTooLargeError, match="limit of 1,000 pixels"):
        images_module.read_image(tmp_path / "big.png", max_pixels=1000)
    folder, _ = checkpoint
    assert run(folder, tmp_path / "big.png", tmp_path / "o") == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and "big.png" in lines[0] and "pannuke-hf slide" in lines[0]
