"""Whole slides (pannuke_hf.slides): generated slides, resolution, agreement with predict_instances,
outputs, resume. Slides are a few hundred to a few thousand pixels; models are tiny."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _models import tiny_unet_fcn

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class OracleModel(torch.nn.Module):
    """Finds the generator's nuclei by colour: dark pixels are class 1, the rest background.

    A fixed 1x1 convolution over the processor-normalised input (mean of the channels, threshold
    between the lightest stain and the pink/white background), then a 5x5 box blur with zero
    padding, so that windows differ at their borders and their averaging matters as in a real
    model; enough to test where outlines land.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-20.0)
            self.conv.weight[0] = 8.0 / 3  # background: bright
            self.conv.bias[0] = -8.0 * 1.1
            self.conv.weight[1] = -8.0 / 3  # nucleus: dark
            self.conv.bias[1] = 8.0 * 1.1
        self.blur = torch.nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=False)
        with torch.no_grad():
            self.blur.weight.fill_(1.0 / 25)
        self.config = SimpleNamespace(
            id2label={
                i: n
                for i, n in enumerate(
                    ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]
                )
            },
            output_stride=1,
            mpp=0.25,
        )

    def forward(self, pixel_values):
        return SimpleNamespace(logits=self.blur(self.conv(pixel_values)))


def plain_processor():
    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    return UNetFCNImageProcessor(do_resize=False)


def rasterise(cells_path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Instance map (row k+1 = k-th Parquet row) of the cells' outlines at level 0, and their ids."""
    import pyarrow.parquet as pq
    import shapely
    from skimage.draw import polygon

    table = pq.read_table(cells_path).to_pydict()
    out = np.zeros((height, width), dtype=np.int32)
    for k, wkt in enumerate(table["outline"], start=1):
        geom = shapely.from_wkt(wkt)
        for poly in getattr(geom, "geoms", [geom]):
            xy = np.asarray(poly.exterior.coords)
            # pixel (r, c) has its centre at (c + 0.5, r + 0.5)
            rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=out.shape)
            out[rr, cc] = k
    return out, np.asarray(table["id"])


def run(slide, model, processor, out, **kwargs):
    from pannuke_hf.slides import segment_slide

    kwargs.setdefault("workers", 0)
    kwargs.setdefault("postprocess_workers", 0)
    kwargs.setdefault("progress", False)
    return segment_slide(slide, model, processor, out_dir=out, **kwargs)


@pytest.fixture(scope="module")
def slide_025(tmp_path_factory):
    from pannuke_hf.slides import make_synthetic_slide

    path = tmp_path_factory.mktemp("slides") / "s025.tiff"
    make_synthetic_slide(path, 900, 700, mpp=0.25, seed=1, tissue_fraction=0.8, workers=2)
    return path


# ---------------------------------------------------------------------------------------------
# generated slides
# ---------------------------------------------------------------------------------------------


def test_synthetic_slide_opens_in_openslide_with_truth(tmp_path):
    import openslide
    import pyarrow.parquet as pq

    from pannuke_hf.slides import make_synthetic_slide
    from pannuke_hf.slides.synthetic import read_truth_region

    path = tmp_path / "s.tiff"
    result = make_synthetic_slide(path, 1300, 1100, mpp=0.25, workers=2)
    slide = openslide.OpenSlide(path)
    assert slide.properties["openslide.vendor"] == "aperio"
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    assert slide.level_dimensions == ((1300, 1100), (325, 275))
    corner = np.asarray(slide.read_region((0, 0), 0, (32, 32)).convert("RGB"))
    assert corner.min() > 225  # background, not tissue
    truth = read_truth_region(tmp_path / "s_truth.tiff", 0, 0, 1300, 1100)
    table = pq.read_table(tmp_path / "s_truth.parquet").to_pydict()
    ids = set(np.unique(truth).tolist()) - {0}
    assert ids == set(table["id"]) and len(ids) == result["nuclei"] > 100
    assert set(table["label_id"]) == {1, 2, 3, 4, 5}
    # nuclei across the JPEG tile borders (x = 256, 512, ...): one id on both sides
    across = set(truth[:, 255].tolist()) & set(truth[:, 256].tolist()) - {0}
    assert len(across) >= 2
    # the image shows the nuclei where the truth says: darker than the tissue around them
    image = np.asarray(slide.read_region((0, 0), 0, (1300, 1100)).convert("RGB")).mean(axis=2)
    assert image[truth > 0].mean() < image[(truth == 0) & (image < 225)].mean() - 30


# ---------------------------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------------------------


class FakeReader:
    path = "fake.svs"

    def __init__(self, mpp, downsamples=(1.0, 4.0, 16.0), size=(40000, 30000)):
        self.mpp = None if mpp is None else (mpp, mpp)
        self.level_downsamples = list(downsamples)
        self.level_dimensions = [(int(size[0] / d), int(size[1] / d)) for d in downsamples]
        self.dimensions = self.level_dimensions[0]


@pytest.mark.parametrize(
    "slide_mpp, downsamples, level, resample",
    [
        (0.25, (1, 4, 16), 0, 1.0),
        (0.263, (1, 4, 16), 0, 0.25 / 0.263),  # a GT450 "40x": enlarged a little
        (0.5, (1, 4, 16), 0, 0.5),  # 20x: enlarged 2x
        (0.0625, (1, 4, 16), 1, 1.0),  # 160x: level 1 is exactly 0.25
        (0.125, (1, 4, 16), 0, 2.0),  # 80x: level 1 would be coarser, level 0 shrunk 2x
        (0.2525, (1, 4), 0, 1.0),  # within the metadata rounding tolerance? no: 1 %
    ],
)
def test_resolution_plan(slide_mpp, downsamples, level, resample):
    from pannuke_hf.slides.reading import plan_resolution

    plan = plan_resolution(FakeReader(slide_mpp, downsamples), 0.25)
    if slide_mpp == 0.2525:
        assert plan.resample == pytest.approx(0.25 / 0.2525)  # 1 % is resampled, not ignored
        return
    assert plan.level == level
    assert plan.resample == pytest.approx(resample)
    assert plan.level0_per_model == pytest.approx(0.25 / slide_mpp)
    assert plan.model_width == int(40000 * slide_mpp / 0.25 + 1e-6)


def test_resolution_needs_mpp():
    from pannuke_hf.slides.reading import SlideError, plan_resolution

    with pytest.raises(SlideError, match="--mpp") as info:
        plan_resolution(FakeReader(None), 0.25)
    assert "\n" not in str(info.value)
    assert plan_resolution(FakeReader(None), 0.25, mpp=0.5).mpp_source == "--mpp"


def test_model_mpp_attribute_defaults_to_025():
    from pannuke_hf.models.unet_fcn import UNetFCNConfig
    from pannuke_hf.slides.pipeline import model_mpp

    assert UNetFCNConfig().mpp == 0.25
    legacy = UNetFCNConfig.from_dict({k: v for k, v in UNetFCNConfig().to_dict().items() if k != "mpp"})
    assert legacy.mpp == 0.25
    assert model_mpp(SimpleNamespace(config=SimpleNamespace())) == 0.25
    assert model_mpp(SimpleNamespace(config=UNetFCNConfig(mpp=0.5))) == 0.5


# ---------------------------------------------------------------------------------------------
# agreement with predict_instances
# ---------------------------------------------------------------------------------------------


def test_slide_equals_predict_instances_on_the_same_image(slide_025, tmp_path):
    """Many small regions (core 256, margin 64): the nuclei equal those of predict_instances on the whole image."""
    from PIL import Image

    from pannuke_hf.exports import nuclei_geojson
    from pannuke_hf.inference import predict_instances
    from pannuke_hf.metrics.pq import panoptic_quality
    from pannuke_hf.slides import open_slide, plan_resolution
    from pannuke_hf.slides.merging import wkt_of
    from pannuke_hf.slides.reading import read_model_region

    model, processor = OracleModel(), plain_processor()
    everywhere = tmp_path / "all.png"  # every region, as on one image
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(everywhere)
    summary = run(
        slide_025,
        model,
        processor,
        tmp_path,
        region_size=256,
        margin=64,
        chunk_regions=3,
        tissue_mask=str(everywhere),
    )
    assert summary["status"] == "done" and summary["regions_done"] == 12
    slide = open_slide(slide_025)
    plan = plan_resolution(slide, 0.25)
    image = read_model_region(slide, plan, 0, 0, plan.model_width, plan.model_height)
    expected, segments = predict_instances(model, processor, image)
    assert summary["nuclei"] == len(segments) > 100
    # both sets through the same outline -> raster path
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = nuclei_geojson(expected, segments, model.config.id2label)["features"]
    ids = [f["properties"]["nucleus_id"] for f in features]
    pq.write_table(
        pa.table({"id": ids, "outline": [wkt_of(f["geometry"]) for f in features]}),
        tmp_path / "expected.parquet",
    )
    want, _ = rasterise(tmp_path / "expected.parquet", *slide.dimensions)
    got, _ = rasterise(tmp_path / "s025_cells.parquet", *slide.dimensions)
    scores = panoptic_quality(want, got)
    assert scores["PQ"] >= 0.99, scores
    # and nucleus by nucleus: the same centroids, areas and classes
    from pannuke_hf.exports import nuclei_records

    records = nuclei_records(expected, segments, model.config.id2label)
    cells = pq.read_table(tmp_path / "s025_cells.parquet").to_pydict()
    key = lambda x, y, a, c: (round(x, 3), round(y, 3), round(a), c)  # noqa: E731
    want_set = sorted(key(r["centroid_x"], r["centroid_y"], r["area"], r["class"]) for r in records)
    got_set = sorted(map(key, cells["centroid_x"], cells["centroid_y"], cells["area_px"], cells["class"]))
    assert got_set == want_set


def _match_truth(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, list[int]]:
    """(true nuclei, matched at IoU > 0.5, true ids matched by more than one output nucleus)."""
    t_ids, t_area = np.unique(truth, return_counts=True)
    p_ids, p_area = np.unique(pred, return_counts=True)
    ta, pa = dict(zip(t_ids.tolist(), t_area.tolist())), dict(zip(p_ids.tolist(), p_area.tolist()))
    both = (truth > 0) & (pred > 0)
    pairs, inter = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    matched: dict[int, int] = {}
    for (t, p), n in zip(pairs.T.tolist(), inter.tolist()):
        if n / (ta[t] + pa[p] - n) > 0.5:
            matched[t] = matched.get(t, 0) + 1
    # nuclei the oracle may miss: those under 10 model pixels
    return len(ta) - (0 in ta), len(matched), [t for t, n in matched.items() if n > 1]


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.263])
def test_outlines_land_on_true_nuclei(mpp, tmp_path):
    from pannuke_hf.slides import make_synthetic_slide
    from pannuke_hf.slides.synthetic import read_truth_region

    size = {0.25: (700, 560), 0.5: (400, 320), 0.263: (680, 540)}[mpp]
    path = tmp_path / "s.tiff"
    make_synthetic_slide(path, *size, mpp=mpp, seed=3, tissue_fraction=0.9, touching=0.0, workers=2)
    summary = run(path, OracleModel(), plain_processor(), tmp_path, region_size=256, margin=48)
    assert summary["resolution"]["slide_mpp"] == pytest.approx(mpp)
    assert summary["resolution"]["level0_per_model"] == pytest.approx(0.25 / mpp)
    truth = read_truth_region(tmp_path / "s_truth.tiff", 0, 0, *size).astype(np.int64)
    pred, _ = rasterise(tmp_path / "s_cells.parquet", *size)
    total, matched, twice = _match_truth(pred, truth)
    assert twice == []
    # at 20x the smallest nuclei are discs of 2 px radius, where one pixel decides the IoU
    assert matched >= (0.8 if mpp == 0.5 else 0.9) * total, (matched, total)
    # centroids in level-0 pixels: the cells' centroids sit on their true nuclei's
    import pyarrow.parquet as pq

    cells = pq.read_table(tmp_path / "s_cells.parquet").to_pydict()
    cx, cy = np.asarray(cells["centroid_x"]), np.asarray(cells["centroid_y"])
    ids = truth[np.clip(cy.astype(int), 0, size[1] - 1), np.clip(cx.astype(int), 0, size[0] - 1)]
    assert (ids > 0).mean() > 0.9
    # no true nucleus holds the centroids of two output nuclei (a nucleus reported twice, e.g.
    # by two regions, would leave identical outlines that the raster above cannot tell apart)
    hits = np.bincount(ids[ids > 0])
    assert hits.max() == 1, np.flatnonzero(hits > 1)[:10]
    rows, cols = np.indices(truth.shape)
    offsets = []
    for k in np.flatnonzero(ids > 0)[:200]:
        t = truth == ids[k]
        offsets.append((cols[t].mean() + 0.5 - cx[k], rows[t].mean() + 0.5 - cy[k]))
    # no shift: a half-pixel or scale error in level-0 coordinates moves every centroid alike
    assert np.abs(np.median(np.asarray(offsets), axis=0)).max() < 0.25
    assert np.isclose(np.asarray(cells["area_um2"]), np.asarray(cells["area_px"]) * mpp**2).all()


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------


def test_geojson_parquet_summary_agree(slide_025, tmp_path):
    import pyarrow.parquet as pq
    from shapely.geometry import shape

    summary = run(slide_025, OracleModel(), plain_processor(), tmp_path, region_size=384, margin=64)
    cells = pq.read_table(tmp_path / "s025_cells.parquet")
    from pannuke_hf.slides.writing import CELL_COLUMNS

    assert tuple(cells.column_names) == CELL_COLUMNS
    with gzip.open(tmp_path / "s025.geojson.gz", "rt") as fh:
        collection = json.load(fh)
    features = collection["features"]
    assert len(features) == cells.num_rows == summary["nuclei"] > 50
    assert (
        [f["properties"]["nucleus_id"] for f in features]
        == cells["id"].to_pylist()
        == list(range(1, cells.num_rows + 1))
    )
    for feature, name in zip(features, cells["class"].to_pylist()):
        geom = shape(feature["geometry"])
        assert geom.is_valid and geom.area > 0
        assert feature["properties"]["objectType"] == "detection"
        assert feature["properties"]["classification"]["name"].lower() == name
    s = json.loads((tmp_path / "s025_summary.json").read_text())
    assert sum(s["nuclei_per_class"].values()) == s["nuclei"]
    assert s["tissue_mm2"] > 0 and s["nuclei_per_mm2"] == pytest.approx(s["nuclei"] / s["tissue_mm2"])
    assert set(s["seconds"]) >= {"read", "infer", "post_process", "write"}
    assert not (tmp_path / "s025.parts").exists()
    assert not list(tmp_path.glob("*.partial"))
    from PIL import Image

    assert Image.open(tmp_path / "s025_thumbnail.png").size == (900, 700)


def test_resume_equals_uninterrupted(slide_025, tmp_path):
    """Stop after two chunks, run again: the same files as one uninterrupted run."""
    model, processor = OracleModel(), plain_processor()
    kwargs = dict(region_size=256, margin=64, chunk_regions=2)
    whole = run(slide_025, model, processor, tmp_path / "a", **kwargs)
    partial = run(slide_025, model, processor, tmp_path / "b", max_chunks=2, **kwargs)
    assert partial["status"] == "partial"
    assert not (tmp_path / "b" / "s025_summary.json").exists()
    assert len(list((tmp_path / "b" / "s025.parts").glob("part-*.json"))) == 2
    resumed = run(slide_025, model, processor, tmp_path / "b", **kwargs)
    assert resumed["nuclei"] == whole["nuclei"]
    # the second run did only the chunks the first left
    assert resumed["windows_this_run"] < whole["windows_this_run"] == whole["windows"] == resumed["windows"]
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "a" / "s025_cells.parquet").equals(
        pq.read_table(tmp_path / "b" / "s025_cells.parquet")
    )
    with (
        gzip.open(tmp_path / "a" / "s025.geojson.gz") as a,
        gzip.open(tmp_path / "b" / "s025.geojson.gz") as b,
    ):
        assert a.read() == b.read()


def test_tissue_mask_and_no_tissue(slide_025, tmp_path):
    from PIL import Image

    from pannuke_hf.slides import open_slide
    from pannuke_hf.slides.synthetic import read_truth_region
    from pannuke_hf.slides.tissue import detect_tissue

    slide = open_slide(slide_025)
    tissue = detect_tissue(slide, 0.25, mask_mpp=2.0)
    # the generator's tissue: the pixels that are not background grey; at 2 µm per mask pixel
    # (the default 8 is coarse for so small a slide) the mask finds that area within 5 %
    truth = read_truth_region(str(slide_025).replace(".tiff", "_truth.tiff"), 0, 0, 900, 700)
    rgb = slide.read_region(0, 0, 0, 900, 700)
    placed = (np.abs(rgb.astype(int) - 242).max(axis=2) > 12).mean() * 900 * 700 * 0.0625 / 1e6
    assert truth.any() and tissue.area_mm2 == pytest.approx(placed, rel=0.05)
    blank = tmp_path / "none.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(blank)
    summary = run(slide_025, tiny_unet_fcn(), plain_processor(), tmp_path, tissue_mask=str(blank))
    assert summary["nuclei"] == 0 and summary["tissue_mm2"] == 0 and "no tissue" in summary["note"]
    assert summary["regions_done"] == 0
    with gzip.open(tmp_path / "s025.geojson.gz", "rt") as fh:
        assert json.load(fh) == {"type": "FeatureCollection", "features": []}


def test_tifffile_reader_matches_openslide_and_reads_ome(slide_025, tmp_path):
    import tifffile

    from pannuke_hf.slides import open_slide

    a, b = open_slide(slide_025), open_slide(slide_025, reader="tifffile")
    assert (a.format, b.format) == ("openslide", "tifffile")
    assert a.level_dimensions == b.level_dimensions and b.mpp == pytest.approx((0.25, 0.25))
    for x, y, w, h in [(0, 0, 900, 700), (-40, -30, 200, 100), (850, 650, 100, 100)]:
        assert np.array_equal(a.read_region(x, y, 0, w, h), b.read_region(x, y, 0, w, h))
    # an OME-TIFF pyramid (sub-resolutions in sub-IFDs) with its pixel size in µm
    image = a.read_region(0, 0, 0, 512, 512)
    ome = tmp_path / "x.ome.tiff"
    with tifffile.TiffWriter(ome) as tw:
        meta = {"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "axes": "YXS"}
        tw.write(image, tile=(128, 128), subifds=1, metadata=meta, photometric="rgb")
        tw.write(image[::2, ::2], tile=(128, 128), subfiletype=1, photometric="rgb")
    c = open_slide(ome)
    assert c.format == "tifffile" and c.mpp == pytest.approx((0.5, 0.5))
    assert c.level_dimensions == [(512, 512), (256, 256)]
    assert np.array_equal(c.read_region(100, 60, 0, 50, 40), image[60:100, 100:150])
    assert np.array_equal(c.read_region(100, 60, 1, 20, 10), image[::2, ::2][30:40, 50:70])
