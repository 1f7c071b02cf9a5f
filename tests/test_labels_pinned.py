"""The class names, pinned as literals: release channel order -> label value -> name, end to end.

Every other test compares names with ``pannuke_hf.constants`` itself, so a swap there (say
"inflammatory" <-> "connective") would pass them all. Here the expected values are written out
from the release description (``masks.npy`` channels: 0 neoplastic, 1 inflammatory, 2 connective /
soft tissue, 3 dead, 4 non-neoplastic epithelial, 5 background) and the reference project's label
values (channel j -> label (j + 1) % 6), and a patch written in the exact raw format, with one
known nucleus per channel, is followed through the builder to the rows of the results table.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest

# Literals from the release description, never from the package.
CHANNEL_TO_LABEL = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 0}
LABEL_NAMES = ("background", "neoplastic", "inflammatory", "connective", "dead", "epithelial")
LABEL_FULL_NAMES = (
    "background",
    "neoplastic",
    "inflammatory",
    "connective / soft tissue",
    "dead",
    "non-neoplastic epithelial",
)
CHANNEL_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial", "background")

# The generated patch: one square nucleus per class channel, each with its own side, raw id
# (above 255 / a multiple of 256 included) and number of rows the "prediction" keeps, so that
# every class gets a different IoU = kept rows / side.
SIDES = (10, 12, 14, 16, 18)
RAW_IDS = (3517, 256, 7, 1024, 300)
KEPT_ROWS = (1, 3, 7, 12, 18)  # IoU 0.10, 0.25, 0.50, 0.75, 1.00
TOP, LEFT = 20, 30


def _square(channel: int) -> tuple[slice, slice]:
    y0 = TOP + 40 * channel
    return slice(y0, y0 + SIDES[channel]), slice(LEFT, LEFT + SIDES[channel])


def _write_release(root) -> None:
    """Three folds in the release layout (float64 arrays, ``Fold k`` with a space), by hand."""
    mask = np.zeros((1, 256, 256, 6), dtype=np.float64)
    mask[0, :, :, 5] = 1.0
    for channel in range(5):
        rows, cols = _square(channel)
        mask[0, rows, cols, channel] = RAW_IDS[channel]
        mask[0, rows, cols, 5] = 0.0
    empty = np.zeros((1, 256, 256, 6), dtype=np.float64)
    empty[..., 5] = 1.0
    image = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3)).astype(np.float64)
    for fold, masks in ((1, mask), (2, empty), (3, empty)):
        images_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
        masks_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
        images_dir.mkdir(parents=True)
        masks_dir.mkdir(parents=True)
        np.save(images_dir / "images.npy", image)
        np.save(images_dir / "types.npy", np.array(["Breast"]))
        np.save(masks_dir / "masks.npy", masks)


def test_constants_pin_the_release_channel_order_label_values_and_names():
    from pannuke_hf import constants

    assert constants.RAW_CHANNELS == CHANNEL_NAMES
    assert dict(enumerate(constants.RAW_CHANNEL_TO_LABEL)) == CHANNEL_TO_LABEL
    assert constants.BACKGROUND_CHANNEL == 5 and constants.BACKGROUND_LABEL == 0
    assert constants.CLASS_NAMES == LABEL_NAMES
    assert constants.CLASS_FULL_NAMES == LABEL_FULL_NAMES
    assert constants.ID2LABEL == {
        0: "background",
        1: "neoplastic",
        2: "inflammatory",
        3: "connective",
        4: "dead",
        5: "epithelial",
    }
    assert constants.LABEL2ID == {
        "background": 0,
        "neoplastic": 1,
        "inflammatory": 2,
        "connective": 3,
        "dead": 4,
        "epithelial": 5,
    }


def test_model_config_defaults_carry_the_pinned_names():
    from pannuke_hf.models.unet_fcn import UNetFCNConfig

    config = UNetFCNConfig()
    assert config.id2label == dict(enumerate(LABEL_NAMES))
    assert config.label2id == {name: i for i, name in enumerate(LABEL_NAMES)}


def _table_rows(markdown: str) -> list[tuple[str, ...]]:
    """(name, IoU, Dice, Acc) of each row of the per-class table (the first table)."""
    lines = markdown.splitlines()
    # the header names the unit ("| Class | IoU (%) | ..."): find it by its first cell
    start = next(i for i, line in enumerate(lines) if line.startswith("| Class | IoU")) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(tuple(cell.strip() for cell in line.strip().strip("|").split("|")))
    return rows


def test_a_generated_patch_keeps_its_class_names_from_raw_to_the_results_table(tmp_path):
    import torch

    import pannuke_hf  # noqa: F401  (registers the builder)
    from pannuke_hf.metrics import make_compute_metrics, results_table, results_to_json

    _write_release(tmp_path / "raw")
    ds = datasets.load_dataset(
        "pannuke_hf", data_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"), split="fold1"
    )
    row = ds[0]
    assert row["id"] == "fold1_0000"

    # Raw -> dataset: each channel's nucleus carries its pinned label value and name.
    semantic = np.asarray(row["semantic_mask"])
    expected_semantic = np.zeros((256, 256), dtype=np.uint8)
    for channel in range(5):
        expected_semantic[_square(channel)] = CHANNEL_TO_LABEL[channel]
    np.testing.assert_array_equal(semantic, expected_semantic)
    label_feature = ds.features["instance_labels"].feature
    assert label_feature.names == list(LABEL_NAMES)
    assert [label_feature.int2str(v) for v in row["instance_labels"]] == [
        "neoplastic",
        "inflammatory",
        "connective",
        "dead",
        "epithelial",
    ]
    assert row["instance_raw_ids"] == list(RAW_IDS)  # one nucleus per channel, in channel order
    instance = np.asarray(row["instance_mask"])
    for channel in range(5):
        assert (instance[_square(channel)] == channel + 1).all()

    # Dataset -> metric: a prediction that keeps the first KEPT_ROWS[j] rows of channel j's
    # nucleus (with the label the dataset gave it) and calls everything else background.
    prediction = np.zeros_like(semantic)
    for channel in range(5):
        rows, cols = _square(channel)
        kept = slice(rows.start, rows.start + KEPT_ROWS[channel])
        prediction[kept, cols] = semantic[kept, cols]
    compute_metrics = make_compute_metrics(6)
    metrics = compute_metrics(
        (
            torch.from_numpy(prediction.astype(np.int64))[None],
            torch.from_numpy(semantic.astype(np.int64))[None],
        )
    )

    # Expected per-class IoU by construction: kept rows / side (the prediction lies inside the
    # nucleus, so accuracy = IoU too); background: true background / predicted background.
    nucleus_area = sum(s * s for s in SIDES)
    predicted_area = sum(k * s for k, s in zip(KEPT_ROWS, SIDES))
    background_iou = (256 * 256 - nucleus_area) / (256 * 256 - predicted_area)
    expected_iou = {"background": background_iou}
    for channel in range(5):
        expected_iou[CHANNEL_NAMES[channel]] = KEPT_ROWS[channel] / SIDES[channel]
    for name, value in expected_iou.items():
        assert metrics[f"iou_{name}"] == pytest.approx(value, abs=1e-12), name

    # Metric -> results table: the rows, in label order, with the full names and their IoU.
    percent = {name: f"{100 * value:.2f}" for name, value in expected_iou.items()}
    rows = _table_rows(results_table(metrics))
    assert [(name, iou, acc) for name, iou, _, acc in rows] == [
        ("background", percent["background"], "100.00"),
        ("neoplastic", "10.00", "10.00"),
        ("inflammatory", "25.00", "25.00"),
        ("connective / soft tissue", "50.00", "50.00"),
        ("dead", "75.00", "75.00"),
        ("non-neoplastic epithelial", "100.00", "100.00"),
    ]
    per_class = results_to_json(metrics)["per_class"]
    assert [(c["id"], c["name"], c["full_name"]) for c in per_class] == [
        (0, "background", "background"),
        (1, "neoplastic", "neoplastic"),
        (2, "inflammatory", "inflammatory"),
        (3, "connective", "connective / soft tissue"),
        (4, "dead", "dead"),
        (5, "epithelial", "non-neoplastic epithelial"),
    ]
    assert [c["iou"] for c in per_class][1:] == pytest.approx([0.10, 0.25, 0.50, 0.75, 1.00], abs=1e-12)


def test_one_name_per_class_in_exports_and_in_the_documented_table():
    """The exported files carry the literal full names; the model keeps the short identifiers; the
    one table of names and colours in docs/instances.md says exactly what the package does."""
    import re
    from pathlib import Path

    from pannuke_hf import constants
    from pannuke_hf.exports import nuclei_geojson, nuclei_records
    from pannuke_hf.models.unet_fcn import UNetFCNConfig

    config = UNetFCNConfig()
    assert [config.id2label[k] for k in range(6)] == list(LABEL_NAMES)  # checkpoints keep their labels
    ids = np.zeros((8, 12), dtype=np.int32)
    segments = []
    for label in range(1, 6):
        ids[1:3, 2 * label : 2 * label + 1] = label
        segments.append({"id": label, "label_id": label, "score": 1.0})
    csv_names = [r["class"] for r in nuclei_records(ids, segments, config.id2label)]
    qupath = [
        f["properties"]["classification"]["name"]
        for f in nuclei_geojson(ids, segments, config.id2label)["features"]
    ]
    assert csv_names == qupath == list(LABEL_FULL_NAMES[1:])

    doc = (Path(__file__).resolve().parents[1] / "docs" / "instances.md").read_text()
    section = doc.split("### Class names and colours", 1)[1]
    rows = re.findall(
        r"^\| (\d) \| `([^`]+)` \| ([^|]+) \| [^|(]*\((\d+), (\d+), (\d+)\)[^|]*\|$", section, re.M
    )
    assert [(int(k), short, full.strip()) for k, short, full, *_ in rows] == [
        (k, LABEL_NAMES[k], LABEL_FULL_NAMES[k]) for k in range(6)
    ]
    assert [(int(r), int(g), int(b)) for *_, r, g, b in rows] == list(constants.PALETTE)
