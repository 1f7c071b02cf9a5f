"""The demo's processing functions (no browser): uploads, prediction, overlay, table, downloads, commands."""

from __future__ import annotations

import csv
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _models import tiny_unet_fcn
from PIL import Image

from pannuke_hf import constants
from pannuke_hf.demo import processing
from pannuke_hf.demo.processing import (
    DemoInputError,
    ImageResult,
    analyse_image,
    example_paths,
    legend_html,
    process_uploads,
    read_upload,
    render_overlay,
    summary_rows,
)

#: The PanNuke release's nucleus classes in channel order (labels 1-5), from the dataset's description.
RELEASE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny random model saved like a checkpoint, and image files
# ---------------------------------------------------------------------------------------------


def save_tiny_checkpoint(path: Path) -> Path:
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    tiny_unet_fcn(seed=7).save_pretrained(path)
    UNetFCNImageProcessor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("demo_ckpt"))


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model, processor, _ = processing.load_demo_model(str(checkpoint), device="cpu")
    return model, processor


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header announces ``width x height`` RGB pixels, with no pixel data at all:
    refusing it proves the size was read from the header before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def predict_command(image_path: Path, checkpoint: Path, out: Path, *extra: str) -> dict[str, dict[str, int]]:
    """What ``pannuke-hf predict --instances`` counts for one image: ``{"pixels": class_counts.csv,
    "nuclei": nuclei_counts.csv}``, each by class name."""
    from pannuke_hf.commands.predict import main

    argv = [
        str(image_path),
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main([*argv, "--instances", *extra]) == 0
    counts = {}
    for key, file in (("pixels", "class_counts.csv"), ("nuclei", "nuclei_counts.csv")):
        with open(out / file, newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        counts[key] = {name: int(row[name]) for name in constants.CLASS_NAMES if name in row}
    return counts


# ---------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------


def test_read_upload_decodes_png_jpeg_tiff_to_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.tif")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.jpg", quality=100)
    np.testing.assert_array_equal(read_upload(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(read_upload(tmp_path / "a.tif"), rgb)
    grey = read_upload(tmp_path / "grey.jpg")
    assert grey.shape == (40, 30, 3) and grey.dtype == np.uint8
    assert np.abs(grey[..., 0].astype(int) - rgb[..., 0]).max() <= 3  # JPEG, nearly lossless
    assert (grey[..., 0] == grey[..., 2]).all()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.write_bytes(b"just some text, not pixels") and p, "not an image file"),
        (lambda p: p.write_bytes(b"") is not None and p, "the file is empty"),
        (lambda p: Image.new("RGB", (1, 1)).save(p) or p, "1 x 1 pixels, too small"),
        (lambda p: png_header_only(p, 20_000, 20_000), "400,000,000 pixels"),
        (lambda p: png_header_only(p, 5_000, 5_000), "5,000 x 5,000 pixels"),
        (lambda p: png_header_only(p, 20_000, 64), "20,000 x 64 pixels"),
        (lambda p: Image.new("RGB", (64, 64)).save(p, format="GIF") or p, "GIF images are not supported"),
    ],
    ids=["text", "empty", "1x1", "20000x20000", "over-pixel-limit", "over-side-limit", "gif"],
)
def test_bad_uploads_give_readable_messages_naming_the_file(tmp_path, make, expected):
    path = make(tmp_path / "upload.png")
    with pytest.raises(DemoInputError) as info:
        read_upload(path)
    message = str(info.value)
    assert message.startswith("upload.png: ")
    assert expected in message
    if "pixels in all" in message:  # the size limits are stated, with the way out
        assert f"{processing.MAX_PIXELS:,} pixels in all" in message and "pannuke-hf predict" in message


def test_truncated_image_is_reported_not_raised_raw(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DemoInputError, match=r"^cut\.png: the image cannot be decoded"):
        read_upload(tmp_path / "cut.png")


# ---------------------------------------------------------------------------------------------
# Prediction, table, overlay
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("magnification", [40, 20])
def test_counts_table_matches_the_predict_command(loaded, checkpoint, tmp_path, magnification):
    """The table's nuclei and label-map pixels per class are what `pannuke-hf predict --instances`
    counts for the same image: at 40x with its defaults, at 20x with half-size tiles, twice the
    processor's scale and the 40x minimum nucleus area in 20x pixels (10 / 4, rounded up)."""
    model, processor = loaded
    path = example_paths()[0]
    image = read_upload(path)
    result = analyse_image(model, processor, image, name=path.name, magnification=magnification)
    assert result.labels.shape == image.shape[:2] and result.labels.dtype == np.uint8
    assert result.instances is not None and result.instances.shape == image.shape[:2]
    rows = summary_rows([result])
    assert [r[1] for r in rows] == list(constants.CLASS_FULL_NAMES[1:])
    assert all(r[0] == path.name for r in rows)

    extra: tuple[str, ...] = ()
    if magnification == 20:  # the model's input is twice the 40x enlargement: 2 * (512 / 256)
        scale = 2 * processor.size["height"] / constants.PATCH_SIZE
        extra = ("--tile-size", str(constants.PATCH_SIZE // 2), "--scale", str(scale), "--min-size", "3")
    expected = predict_command(path, checkpoint, tmp_path / "pred", *extra)
    column = {h: i for i, h in enumerate(processing.SUMMARY_HEADERS)}
    names = constants.CLASS_NAMES[1:]
    assert [r[column["label-map pixels"]] for r in rows] == [expected["pixels"][n] for n in names]
    assert [r[column["nuclei"]] for r in rows] == [expected["nuclei"][n] for n in names]
    assert sum(expected["nuclei"].values()) > 0  # the model does find nuclei

    # areas: the instance pixels of each class's nuclei, counted here from the maps themselves
    class_of_id = np.zeros(int(result.instances.max()) + 1, dtype=np.int64)
    for seg in result.segments_info:
        class_of_id[seg["id"]] = seg["label_id"]
    areas = np.bincount(class_of_id[result.instances].ravel(), minlength=constants.NUM_LABELS)
    assert [r[column["area (px)"]] for r in rows] == areas[1:].tolist()

    # the downloads are the files `pannuke-hf predict` writes for the same image
    written = {p.name: p for p in processing.write_downloads(result, tmp_path / "dl")}
    for suffix in ("_labels.png", "_instances.png"):
        with (
            Image.open(written[path.stem + suffix]) as ours,
            Image.open(tmp_path / "pred" / (path.stem + suffix)) as ref,
        ):
            np.testing.assert_array_equal(np.array(ours), np.array(ref))
    for suffix in ("_nuclei.csv", "_nuclei.geojson"):
        assert (
            written[path.stem + suffix].read_bytes()
            == (tmp_path / "pred" / (path.stem + suffix)).read_bytes()
        )


def test_20x_differs_from_40x(loaded):
    """The magnification reaches the model: the same image gives another label map at 20x."""
    model, processor = loaded
    image = read_upload(example_paths()[0])
    at40 = analyse_image(model, processor, image, magnification=40).labels
    at20 = analyse_image(model, processor, image, magnification=20).labels
    assert (at40 != at20).mean() > 0.01


def test_overlay_blends_palette_colours_at_the_chosen_opacity():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
    labels = rng.integers(0, constants.NUM_LABELS, (24, 20)).astype(np.uint8)
    result = ImageResult("x.png", image, labels)
    np.testing.assert_array_equal(render_overlay(result, 0.0), image)
    full = render_overlay(result, 1.0)
    for k in range(1, constants.NUM_LABELS):
        assert (full[labels == k] == constants.PALETTE[k]).all()
    np.testing.assert_array_equal(full[labels == 0], image[labels == 0])  # background untouched
    half = render_overlay(result, 0.3).astype(float)
    y, x = np.argwhere(labels == 2)[0]
    expected = np.rint(0.7 * image[y, x] + 0.3 * np.asarray(constants.PALETTE[2]))
    np.testing.assert_array_equal(half[y, x], expected)


def test_legend_has_the_palette_colour_and_correct_name_of_each_class():
    items = re.findall(r"background:rgb\((\d+),(\d+),(\d+)\)\"></span> ([^<]+)</span>", legend_html())
    assert len(items) == len(RELEASE_CLASSES)  # the five nucleus classes, no background entry
    for (r, g, b, name), (k, expected) in zip(items, RELEASE_CLASSES.items()):
        assert (int(r), int(g), int(b)) == constants.PALETTE[k]
        assert expected in name, (k, name)


# ---------------------------------------------------------------------------------------------
# One run of the page
# ---------------------------------------------------------------------------------------------


def test_a_batch_with_one_bad_file_reports_it_and_processes_the_rest(loaded, tmp_path):
    model, processor = loaded
    good = example_paths()[1]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    wide = tmp_path / "wide.png"
    rgb = np.asarray(Image.open(good).convert("RGB"))
    Image.fromarray(np.concatenate([rgb, rgb[:, :100]], axis=1)).save(wide)  # 356 px: two tiles

    seen: list[float] = []
    out = process_uploads(
        model, processor, [good, bad, wide], tmp_path / "dl", progress=lambda f, m: seen.append(f)
    )
    assert [r.name for r in out.results] == [good.name, "wide.png"]
    assert len(out.errors) == 1 and out.errors[0].startswith("notes.png: ")
    status = out.status_markdown()
    assert "Segmented 2 image(s)" in status and "notes.png" in status and "Traceback" not in status
    assert len(out.rows) == 2 * (constants.NUM_LABELS - 1)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)

    names = {p.name for p in out.files}
    assert {f"{good.stem}_labels.png", "wide_labels.png", "summary.csv"} <= names
    with Image.open(tmp_path / "dl" / "wide_labels.png") as im:
        np.testing.assert_array_equal(np.array(im), out.results[1].labels)
    with open(tmp_path / "dl" / "summary.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == list(processing.SUMMARY_HEADERS)
    assert [int(r[5]) for r in table[1:]] == [r[5] for r in out.rows]


def test_an_unexpected_failure_is_a_message_not_a_traceback(loaded, tmp_path):
    _, processor = loaded

    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, pixel_values):
            raise RuntimeError("out of memory on the fake device")

    out = process_uploads(Broken(), processor, [example_paths()[0]], tmp_path)
    assert out.results == [] and out.files == []
    assert out.errors == [
        f"{example_paths()[0].name}: unexpected error (RuntimeError: out of memory on the fake device)"
    ]


# ---------------------------------------------------------------------------------------------
# Examples, checkpoint discovery, commands
# ---------------------------------------------------------------------------------------------


def test_bundled_examples_are_the_generated_patches():
    from pannuke_hf.data.synthetic import make_synthetic_patch

    paths = example_paths()
    assert len(paths) == len(processing.EXAMPLE_PATCHES) >= 2
    by_name = {p.name: p for p in paths}
    for fold, index in processing.EXAMPLE_PATCHES:
        image, _, tissue = make_synthetic_patch(processing.EXAMPLE_SEED, fold, index)
        path = by_name[f"generated_{tissue.lower()}_{fold}_{index}.png"]
        assert path.stat().st_size < 200_000
        with Image.open(path) as im:
            np.testing.assert_array_equal(np.array(im), image.astype(np.uint8))


def test_demo_checkpoint_is_found_in_demo_output(tmp_path, checkpoint):
    assert processing.find_demo_checkpoint([tmp_path]) is None
    (tmp_path / "demo_output").mkdir()
    (tmp_path / "demo_output" / "config.json").write_text("{}")
    assert processing.find_demo_checkpoint([tmp_path]) is None  # no weights: not a checkpoint
    for name in ("model.safetensors", "preprocessor_config.json"):
        (tmp_path / "demo_output" / name).write_bytes((checkpoint / name).read_bytes())
    assert processing.find_demo_checkpoint([tmp_path]) == tmp_path / "demo_output"


def test_demo_command_without_a_checkpoint_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    from pannuke_hf.commands.demo import main

    monkeypatch.setattr(processing, "checkpoint_search_paths", lambda: [tmp_path])
    assert main([]) == 1
    err = capsys.readouterr().err
    assert "`python train.py`" in err and "demo_output" in err and "Traceback" not in err


@pytest.mark.parametrize("model", ["/nonexistent", "nowhere_rel", "runs/typo"])
def test_demo_command_with_a_missing_model_says_no_such_folder_before_any_work(
    tmp_path, monkeypatch, capsys, model
):
    """Not "Repo id must use alphanumeric chars" from the Hub client: the folder does not exist."""
    from pannuke_hf.commands.demo import main

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded although the folder does not exist")

    monkeypatch.setattr(processing, "load_demo_model", no_loading)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["--model", model]) == 1
    err = capsys.readouterr().err
    assert f"--model {model}: no such folder" in err
    assert "alphanumeric" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_demo_command_with_a_folder_that_holds_no_model_fails_cleanly(tmp_path, capsys):
    from pannuke_hf.commands.demo import main

    assert main(["--model", str(tmp_path)]) == 1
    assert "holds no model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# What the page says the model was trained on: its card, or nothing
# ---------------------------------------------------------------------------------------------


def _card_folder(folder: Path, synthetic: bool | None) -> Path:
    """A folder holding the model card of a run on generated data / on PanNuke, or no card."""
    from pannuke_hf.training.model_card import render_model_card

    folder.mkdir(parents=True)
    if synthetic is not None:
        card = render_model_card("run", synthetic_data=synthetic)  # no evaluation: the header alone
        (folder / "README.md").write_text(card)
    return folder


def test_footer_says_what_the_checkpoint_was_trained_on(tmp_path):
    from pannuke_hf.demo.app import footer

    generated = footer(processing.training_data_for(_card_folder(tmp_path / "gen", True)))
    assert "generated PanNuke-format data" in generated and "not a pathology model" in generated
    assert "PanNuke](" not in generated  # never "trained on PanNuke"
    pannuke = footer(processing.training_data_for(_card_folder(tmp_path / "pan", False)))
    assert pannuke.startswith("Model trained on [PanNuke](") and "CC BY-NC-SA 4.0" in pannuke
    unknown = footer(processing.training_data_for(_card_folder(tmp_path / "none", None)))
    assert unknown == "A research demo, not a diagnostic tool."  # nothing about data
    # a Hub id that cannot be fetched (the tests run offline): unknown, no error
    assert processing.training_data_for("someone/not-cached") is None


def test_without_a_card_the_config_record_tells_generated_data(tmp_path):
    import json

    from pannuke_hf.data.splits import training_data_record

    for synthetic in (True, False):
        folder = tmp_path / f"cardless-{synthetic}"
        folder.mkdir()
        config = {"model_type": "unet_fcn", "training_data": training_data_record("reference", 0, synthetic)}
        (folder / "config.json").write_text(json.dumps(config))
        said = processing.training_data_for(folder)
        if synthetic:  # no card, but train.py's record says generated data: the page must say so
            assert said is not None and said.generated
        else:  # raw-format data of unknown origin: nothing is said about the data
            assert said is None


def test_cards_are_read_for_their_training_data():
    from pannuke_hf.training.model_card import render_model_card, training_data_from_card

    # a demo card written before the synthetic-data tag: its model-index names the generated data
    legacy = render_model_card("demo", results={"summary": {"mIoU": 0.5}}, synthetic_data=True)
    legacy = legacy.replace("- synthetic-data\n", "")
    assert "synthetic-data" not in legacy and training_data_from_card(legacy).generated
    other = "---\nlicense: mit\ndatasets:\n- someone/my-slides\n- pannuke\n---\n# m\n"
    found = training_data_from_card(other)
    assert not found.generated and found.pannuke and found.datasets == ("someone/my-slides", "pannuke")
    assert "[`someone/my-slides`](https://huggingface.co/datasets/someone/my-slides)" in found.markdown()
    for no_data in ("# a card without a header\n", "---\nlicense: mit\n---\n", "---\n: [\n---\n"):
        assert training_data_from_card(no_data) is None, no_data


def test_cli_help_lists_the_demo_without_importing_gradio():
    code = (
        "import sys; from pannuke_hf.cli import main; main(['--help']); "
        "print('GRADIO_IMPORTED' if 'gradio' in sys.modules else 'GRADIO_NOT_IMPORTED')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "space" in out
    assert "GRADIO_NOT_IMPORTED" in out


def test_build_app_makes_a_page_with_the_model(loaded):
    import gradio as gr

    from pannuke_hf.demo import build_app

    model, processor = loaded
    app = build_app("tiny-model", model=model, processor=processor)
    assert isinstance(app, gr.Blocks)
    config = app.get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"Overlay opacity", "Scan magnification", "Nuclei per class"} <= labels
    assert any(str(label).startswith("Downloads") for label in labels)
    app.close()


def test_page_footer_follows_the_model_card(loaded, tmp_path):
    import gradio as gr

    from pannuke_hf.demo import build_app

    model, processor = loaded
    for synthetic, expected in ((True, "generated PanNuke-format data"), (None, None)):
        folder = _card_folder(tmp_path / f"card_{synthetic}", synthetic)
        app = build_app(str(folder), model=model, processor=processor)
        assert isinstance(app, gr.Blocks)
        (text,) = [
            c["props"]["value"]
            for c in app.get_config_file()["components"]
            if c.get("props", {}).get("elem_id") == "footer"
        ]
        app.close()
        assert "PanNuke](" not in text  # the old footer: "Trained on [PanNuke](...)"
        if expected:
            assert expected in text
        else:
            assert "trained" not in text.lower()
