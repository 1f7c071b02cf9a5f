"""The slide-wide class label map (pannuke_hf.slides.label_map): exact pixels at every level,
bounded memory (one band of nuclei at a time), OpenSlide opens it, bad tables fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------------
# a cells table made from a known instance map
# ---------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 640, 320


def _known_nuclei() -> tuple[np.ndarray, dict[int, int]]:
    """(HEIGHT, WIDTH) instance map and ``{id: label}``: two generated patches, a ring nucleus with
    another nucleus in its hole, and a nucleus in two pieces."""
    from pannuke_hf.data.synthetic import make_synthetic_patch
    from pannuke_hf.nuclei import release_to_instances

    ids = np.zeros((HEIGHT, WIDTH), np.int32)
    class_of: dict[int, int] = {}
    for k, (x, y) in enumerate([(37, 21), (293, 45)]):
        _, masks, _ = make_synthetic_patch(4, 1, 7 + k, quirks=False, touching=0.6)
        patch, classes = release_to_instances(masks)
        base = max(class_of, default=0)
        ids[y : y + 256, x : x + 256] = np.where(patch > 0, patch + base, 0)
        class_of.update({i + base: c for i, c in classes.items()})
    n = max(class_of)
    rows, cols = np.indices(ids.shape)
    r = np.hypot(rows - 150, cols - 590)
    ids[r < 6] = n + 1  # inside the ring's hole; a lower id: drawn before the ring
    class_of[n + 1] = 4
    ids[(r >= 10) & (r < 22)] = n + 2
    class_of[n + 2] = 2
    ids[280:284, 560:566] = n + 3  # one nucleus, two pieces (a MultiPolygon)
    ids[290:296, 600:603] = n + 3
    class_of[n + 3] = 3
    return ids, class_of


def _write_cells(path: Path, ids: np.ndarray, class_of: dict[int, int], row_group_size: int = 25) -> None:
    """``NAME_cells.parquet`` as the pipeline writes it (outlines from the same code), small row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pannuke_hf.constants import CLASS_FULL_NAMES, CLASS_NAMES
    from pannuke_hf.exports import nuclei_geojson, nuclei_records
    from pannuke_hf.slides.merging import wkt_of

    id2label = dict(enumerate(CLASS_NAMES))
    segments = [{"id": i, "label_id": c, "score": 0.9} for i, c in sorted(class_of.items())]
    records = nuclei_records(ids, segments, id2label)
    features = nuclei_geojson(ids, segments, id2label)["features"]
    table = pa.table(
        {
            "id": [s["id"] for s in segments],
            "class": [CLASS_FULL_NAMES[s["label_id"]] for s in segments],
            "label_id": pa.array([s["label_id"] for s in segments], pa.int16()),
            "centroid_x": [r["centroid_x"] for r in records],
            "centroid_y": [r["centroid_y"] for r in records],
            **{c: [float(r[c]) for r in records] for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")},
            "outline": [wkt_of(f["geometry"]) for f in features],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    folder = tmp_path_factory.mktemp("label_map")
    ids, class_of = _known_nuclei()
    labels = np.zeros(max(class_of) + 1, np.uint8)
    labels[list(class_of)] = list(class_of.values())
    _write_cells(folder / "k_cells.parquet", ids, class_of)
    return folder / "k_cells.parquet", labels[ids]


def test_every_level_is_the_classes_exactly(known, tmp_path):
    import openslide
    import tifffile

    from pannuke_hf.slides.label_map import label_map_levels, write_label_map

    cells, truth = known
    assert {2, 3, 4}.issubset(set(np.unique(truth)))
    out = write_label_map(cells, WIDTH, HEIGHT, tmp_path / "k_labels.tiff", tile=32, mpp=0.25)
    assert out == tmp_path / "k_labels.tiff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k_labels.tiff"]  # no .partial left
    levels = label_map_levels(WIDTH, HEIGHT, 32, 4)
    assert [lv[0] for lv in levels] == [1, 4, 16, 64]
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == len(levels)
        for page, (d, w, h) in zip(tif.pages, levels):
            assert page.is_tiled and page.tilewidth == 32 and page.compression == 8  # deflate
            got = page.asarray()
            assert got.dtype == np.uint8 and got.shape == (h, w)
            # level 0 holds exactly the classes; level k is level 0 sampled every d pixels (nearest)
            want = truth[d // 2 :: d, d // 2 :: d]
            np.testing.assert_array_equal(got[: want.shape[0], : want.shape[1]], want, err_msg=f"level {d}")
        legend = json.loads(tif.pages[0].description)["labels"]
    from pannuke_hf.constants import CLASS_FULL_NAMES

    present = sorted(set(np.unique(truth).tolist()) - {0})
    assert legend == {"0": "background", **{str(k): CLASS_FULL_NAMES[k] for k in present}}
    slide = openslide.OpenSlide(out)
    assert slide.level_dimensions == tuple((w, h) for _, w, h in levels)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    rgba = np.asarray(slide.read_region((0, 0), 0, (WIDTH, HEIGHT)))
    np.testing.assert_array_equal(rgba[..., 0], truth)
    assert (rgba[..., 3] == 255).all()


def test_one_band_of_nuclei_at_a_time(known, tmp_path, monkeypatch):
    """Memory: a band is filled from the nuclei whose box meets it, never the whole table, and in
    batches of at most BATCH_ROWS, also at coarse levels where one band spans the whole slide."""
    import pyarrow.parquet as pq

    from pannuke_hf.slides import label_map

    cells, truth = known
    table = pq.read_table(cells, columns=["id", "bbox_y0", "bbox_y1"])
    total = table.num_rows
    y0, y1 = table.column("bbox_y0").to_numpy(), table.column("bbox_y1").to_numpy()
    given: dict[tuple[int, int], list[int]] = {}
    fill = label_map._fill_band

    def spy(band, rows, cols, row0, d, nuclei):
        assert nuclei.num_rows <= 40
        given.setdefault((d, row0), []).extend(nuclei.column("id").to_pylist())
        return fill(band, rows, cols, row0, d, nuclei)

    monkeypatch.setattr(label_map, "_fill_band", spy)
    monkeypatch.setattr(label_map, "BATCH_ROWS", 40)
    label_map.write_label_map(cells, WIDTH, HEIGHT, tmp_path / "k.tiff", tile=32)
    ids = table.column("id").to_numpy()
    for row0 in range(0, HEIGHT, 32):
        # level 0: the nuclei meeting the band's rows, each once, in id order
        meets = ids[(y1 > row0 + 0.5) & (y0 <= row0 + 31.5)].tolist()
        assert given[(1, row0)] == meets, row0
        assert len(meets) < total / 3
    assert given[(64, 0)] == ids.tolist()  # the coarsest band meets every nucleus: 40 at a time


@pytest.mark.parametrize(
    "fault, message",
    [
        ("label_zero", "nucleus id 5: label_id 0 is not a class label"),
        ("outside", "lies outside the 100x80 slide"),
        ("no_outline", "not a cells table, no column outline"),
        ("bad_wkt", "nucleus id 5: outline is not WKT"),
    ],
)
def test_bad_table_one_line_nothing_written(fault, message, known, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pannuke_hf.slides.label_map import write_label_map
    from pannuke_hf.slides.reading import SlideError

    cells, _ = known
    table = pq.read_table(cells)
    size = (WIDTH, HEIGHT)
    row = int(pc.index(table.column("id"), 5).as_py())
    if fault == "label_zero":
        values = table.column("label_id").to_pylist()
        values[row] = 0
        table = table.set_column(table.schema.get_field_index("label_id"), "label_id", [values])
    elif fault == "outside":
        size = (100, 80)  # the table is another slide's
    elif fault == "no_outline":
        table = table.drop_columns(["outline"])
    else:
        values = table.column("outline").to_pylist()
        values[row] = "POLYGON ((1 2, 3"
        table = table.set_column(table.schema.get_field_index("outline"), "outline", [values])
    bad = tmp_path / "bad_cells.parquet"
    pq.write_table(table, bad)
    with pytest.raises(SlideError) as info:
        write_label_map(bad, *size, tmp_path / "bad_labels.tiff", tile=64)
    assert str(bad) in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "bad_labels.tiff").exists()
    assert not (tmp_path / "bad_labels.tiff.partial").exists()


# ---------------------------------------------------------------------------------------------
# on a segmented generated slide
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """``pannuke-hf slide --label-map`` on a generated slide, with a tiny model (several classes)."""
    from _models import tiny_unet_fcn
    from PIL import Image

    from pannuke_hf.cli import main as cli
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    folder = tmp_path_factory.mktemp("segmented")
    model = folder / "model"
    tiny_unet_fcn(1).save_pretrained(model)  # seed 1: fewer holed blobs than 0 (each ring costs a fill)
    UNetFCNImageProcessor(do_resize=False).save_pretrained(model)
    slide = folder / "s.tiff"
    make = ["make-synthetic-slide", str(slide), "--size", "512x384", "--tissue-fraction", "0.9", "--no-truth"]
    assert cli(make) == 0
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(folder / "all.png")
    out = folder / "out"
    args = [
        "slide",
        str(slide),
        "--model",
        str(model),
        "--out",
        str(out),
        "--tissue-mask",
        str(folder / "all.png"),
    ]
    args += [
        "--region-size",
        "512",
        "--workers",
        "0",
        "--postprocess-workers",
        "0",
        "--no-progress",
        "--label-map",
    ]
    assert cli(args) == 0
    return slide, out


def _check_against_cells(label_map: Path, slide: Path, cells: Path) -> None:
    """OpenSlide opens the map at the slide's level-0 size; nuclei centroids carry their class."""
    import openslide
    import pyarrow.parquet as pq
    import shapely

    from pannuke_hf.slides.label_map import label_map_levels

    opened = openslide.OpenSlide(slide)
    labels = openslide.OpenSlide(label_map)
    assert labels.dimensions == opened.dimensions
    assert labels.level_count == len(label_map_levels(*opened.dimensions))  # 1 here: the slide fits a tile
    image = np.asarray(labels.read_region((0, 0), 0, labels.dimensions))[..., 0]
    table = pq.read_table(cells).to_pydict()
    outlines = shapely.from_wkt(np.asarray(table["outline"]))
    want = np.asarray(table["label_id"])
    # the same pixels filled another way: pixel centres that shapely finds inside each outline
    # (holes excluded), in id order (a later nucleus over an earlier one)
    expected = np.zeros_like(image)
    for outline, label, x0, y0, x1, y1 in zip(
        outlines, want, *(np.asarray(table[c], int) for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
    ):
        rows, cols = np.mgrid[y0:y1, x0:x1]
        inside = shapely.contains_xy(outline, cols + 0.5, rows + 0.5)
        expected[rows[inside], cols[inside]] = label
    np.testing.assert_array_equal(image, expected)
    # centroids: a nucleus whose centroid pixel lies inside its outline shows its class there (the
    # tiny model's blobs are curved and holed: many centroids lie outside their own nucleus)
    cx = np.floor(np.asarray(table["centroid_x"])).astype(int)
    cy = np.floor(np.asarray(table["centroid_y"])).astype(int)
    own = shapely.contains_xy(outlines, cx + 0.5, cy + 0.5)
    assert own.mean() > 0.5
    np.testing.assert_array_equal(image[cy[own], cx[own]], want[own])
    assert set(np.unique(image)) - {0} == set(np.unique(want))


def test_slide_command_writes_the_label_map(segmented):
    slide, out = segmented
    summary = json.loads((out / "s_summary.json").read_text())
    assert len(summary["nuclei_per_class"]) >= 3
    assert summary["label_map"] == "s_labels.tiff" and summary["seconds"]["label_map"] > 0
    assert not list(out.glob("*.partial"))
    _check_against_cells(out / "s_labels.tiff", slide, out / "s_cells.parquet")
