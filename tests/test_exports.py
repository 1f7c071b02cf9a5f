"""Per-nucleus exports: CSV records, QuPath GeoJSON, 16-bit PNG, release-format arrays."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from skimage.draw import disk, ellipse

from pannuke_hf.constants import ID2LABEL, PALETTE
from pannuke_hf.exports import (
    CSV_COLUMNS,
    nuclei_geojson,
    nuclei_records,
    read_instance_png,
    write_geojson,
    write_instance_png,
    write_nuclei_csv,
    write_release_array,
)

#: What a pathologist reads for labels 1-5, written out (not read from the package): the PanNuke
#: release's class descriptions. Label 5 is *non*-neoplastic epithelium.
FULL_NAMES = {
    1: "neoplastic",
    2: "inflammatory",
    3: "connective / soft tissue",
    4: "dead",
    5: "non-neoplastic epithelial",
}


def shoelace(ring) -> float:
    """Unsigned area of a closed ring [[x, y], ...] (first point repeated)."""
    xy = np.asarray(ring, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def polygon_area(geometry) -> float:
    """Area of a Polygon or MultiPolygon: outer rings minus holes."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return sum(shoelace(rings[0]) - sum(shoelace(hole) for hole in rings[1:]) for rings in polygons)


@pytest.fixture
def nuclei():
    """A disc, a square, an ellipse, a ring (hole), a nucleus in two pieces; classes 1, 3, 5, 2, 4."""
    ids = np.zeros((80, 100), dtype=np.int32)
    ids[disk((20, 20), 9)] = 1
    ids[10:20, 50:60] = 2  # 10 x 10 square: centroid (55, 15) in corner coordinates
    ids[ellipse(55, 30, 6, 15, rotation=0.6)] = 3
    ids[45:70, 60:85] = 4
    ids[52:63, 67:78] = 0  # hole
    ids[2:6, 85:92] = 5
    ids[10:14, 88:95] = 5  # second piece of nucleus 5
    segments = [
        {"id": 1, "label_id": 1, "score": 0.9, "was_fused": False},
        {"id": 2, "label_id": 3, "score": 0.8, "was_fused": False},
        {"id": 3, "label_id": 5, "score": 0.7, "was_fused": False},
        {"id": 4, "label_id": 2, "score": 0.6, "was_fused": False},
        {"id": 5, "label_id": 4, "score": 0.5, "was_fused": False},
    ]
    return ids, segments


def test_records_centroid_area_and_box_of_a_known_square(nuclei):
    ids, segments = nuclei
    records = nuclei_records(ids, segments, ID2LABEL)
    assert [r["id"] for r in records] == [1, 2, 3, 4, 5]
    square = records[1]
    # pixels x = 50..59, y = 10..19; pixel centres at +0.5
    assert square == {
        "id": 2,
        "class": "connective / soft tissue",
        "centroid_x": 55.0,
        "centroid_y": 15.0,
        "area": 100,
        "area_um2": 6.25,  # 100 pixels of 0.25 x 0.25 µm
        "bbox_x0": 50,
        "bbox_y0": 10,
        "bbox_x1": 60,
        "bbox_y1": 20,
        "score": 0.8,
    }
    assert [r["class"] for r in records] == [FULL_NAMES[s["label_id"]] for s in segments]
    assert [r["area"] for r in records] == [int((ids == k).sum()) for k in range(1, 6)]
    assert nuclei_records(ids, segments, ID2LABEL, microns_per_pixel=0.5)[1]["area_um2"] == 25.0
    shifted = nuclei_records(ids, segments, ID2LABEL, offset=(1000, 2000))[1]
    assert (shifted["centroid_x"], shifted["centroid_y"], shifted["bbox_x0"], shifted["bbox_y1"]) == (
        1055.0,
        2015.0,
        1050,
        2020,
    )


def test_csv_columns_and_values(nuclei, tmp_path):
    ids, segments = nuclei
    path = tmp_path / "nuclei.csv"
    write_nuclei_csv(nuclei_records(ids, segments, ID2LABEL), path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert list(CSV_COLUMNS) == [
        "id",
        "class",
        "centroid_x",
        "centroid_y",
        "area",
        "area_um2",
        "bbox_x0",
        "bbox_y0",
        "bbox_x1",
        "bbox_y1",
        "score",
    ]
    assert float(rows[1]["area_um2"]) == 6.25
    assert rows[1]["class"] == "connective / soft tissue" and float(rows[1]["centroid_x"]) == 55.0
    assert int(rows[1]["area"]) == 100 and float(rows[1]["score"]) == 0.8
    write_nuclei_csv([], tmp_path / "empty.csv")
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(CSV_COLUMNS)


def test_geojson_feature_collection_polygons_cover_the_nuclei(nuclei, tmp_path):
    ids, segments = nuclei
    collection = nuclei_geojson(ids, segments, ID2LABEL)
    path = tmp_path / "nuclei.geojson"
    write_geojson(collection, path)
    loaded = json.loads(path.read_text())
    assert loaded == collection
    assert loaded["type"] == "FeatureCollection" and len(loaded["features"]) == 5
    for feature, segment in zip(loaded["features"], segments):
        assert feature["type"] == "Feature"
        props = feature["properties"]
        label = segment["label_id"]
        assert props["objectType"] == "detection"
        assert props["classification"]["name"] == FULL_NAMES[label]  # the CSV's name, not recased
        assert props["classification"]["color"] == list(PALETTE[label])
        geometry = feature["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        for rings in polygons:
            for ring in rings:
                assert len(ring) >= 4 and ring[0] == ring[-1]  # closed
        area = (ids == segment["id"]).sum()
        assert polygon_area(geometry) == pytest.approx(area, rel=0.03), segment["id"]
    kinds = [f["geometry"]["type"] for f in loaded["features"]]
    assert kinds == ["Polygon"] * 4 + ["MultiPolygon"]
    assert len(loaded["features"][3]["geometry"]["coordinates"]) == 2  # outer ring + hole
    assert len(loaded["features"][4]["geometry"]["coordinates"]) == 2  # two pieces


def test_geojson_coordinates_are_image_pixels_plus_offset(nuclei):
    ids, segments = nuclei
    square = nuclei_geojson(ids, segments[1:2], ID2LABEL)["features"][0]["geometry"]["coordinates"][0]
    xy = np.asarray(square)
    # the square's pixel edges are x 50..60, y 10..20; corners are cut by at most half a pixel
    assert xy[:, 0].min() == 50 and xy[:, 0].max() == 60 and xy[:, 1].min() == 10 and xy[:, 1].max() == 20
    moved = nuclei_geojson(ids, segments[1:2], ID2LABEL, offset=(100, 7))["features"][0]
    np.testing.assert_allclose(np.asarray(moved["geometry"]["coordinates"][0]), xy + [100, 7])


def test_segments_must_match_the_map(nuclei):
    ids, segments = nuclei
    with pytest.raises(ValueError, match="segments_info\\[1\\]: nucleus id 9"):
        nuclei_records(ids, [segments[0], {"id": 9, "label_id": 1, "score": 1.0}], ID2LABEL)
    with pytest.raises(ValueError, match="label_id 7"):
        nuclei_geojson(ids, [{"id": 1, "label_id": 7, "score": 1.0}], ID2LABEL)


def test_instance_png_is_16_bit_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 65536, size=(37, 53)).astype(np.int64)
    ids[0, 0], ids[0, 1] = 65535, 256
    path = tmp_path / "instances.png"
    write_instance_png(ids, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode in ("I;16", "I")
        assert np.array_equal(np.asarray(image).astype(np.int64), ids)
    assert np.array_equal(read_instance_png(path), ids)
    with pytest.raises(ValueError, match="65536"):
        write_instance_png(np.full((2, 2), 65536), tmp_path / "too_many.png")


def test_release_array_holds_each_nucleus_in_its_class_channel(nuclei, tmp_path):
    ids, segments = nuclei
    path = tmp_path / "pred.npy"
    empty = (np.zeros_like(ids), [])
    shape = write_release_array(path, [(ids, segments), empty], num_images=2)
    assert shape == (2, 80, 100, 6)
    array = np.load(path)
    assert array.shape == (2, 80, 100, 6)
    for segment in segments:
        channel = segment["label_id"] - 1  # release channels 0-4 = labels 1-5
        inside = ids == segment["id"]
        assert (array[0, :, :, channel][inside] == segment["id"]).all()
        others = [c for c in range(5) if c != channel]
        assert not array[0][inside][:, others].any()
    assert np.array_equal(array[0, :, :, 5], (ids == 0).astype(array.dtype))
    assert not array[1, :, :, :5].any() and array[1, :, :, 5].all()
    with pytest.raises(ValueError, match="image 1 has size"):
        write_release_array(
            tmp_path / "bad.npy", [(ids, segments), (np.zeros((10, 10), dtype=np.int32), [])], num_images=2
        )
    with pytest.raises(ValueError, match="expected 3 predictions, got 2"):
        write_release_array(tmp_path / "short.npy", [(ids, segments), empty], num_images=3)


def test_csv_and_geojson_carry_one_name_per_class_and_keep_other_label_sets(nuclei, tmp_path):
    """The CSV ``class`` and the QuPath class of a nucleus are the same full name; "Epithelial"
    beside "Neoplastic" (the class is non-neoplastic) never reaches QuPath. A model whose id2label
    names other classes keeps its own names; JSON configs have string keys."""
    ids, segments = nuclei
    records = nuclei_records(ids, segments, ID2LABEL)
    features = nuclei_geojson(ids, segments, ID2LABEL)["features"]
    csv_names = [r["class"] for r in records]
    assert csv_names == [f["properties"]["classification"]["name"] for f in features]
    assert set(csv_names) == set(FULL_NAMES.values())
    assert "epithelial" not in csv_names and "Epithelial" not in json.dumps(features)

    custom = {"0": "background", "1": "tumour", "2": "lymphocyte", "3": "stroma", "4": "dead", "5": "other"}
    assert [r["class"] for r in nuclei_records(ids, segments, custom)] == [
        "tumour", "stroma", "other", "lymphocyte", "dead"
    ]  # fmt: skip
    names = [
        f["properties"]["classification"]["name"] for f in nuclei_geojson(ids, segments, custom)["features"]
    ]
    assert names == ["tumour", "stroma", "other", "lymphocyte", "dead"]
