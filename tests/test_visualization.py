"""Palette, colourised label maps, overlays, outlines, error maps and legends."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pannuke_hf import constants
from pannuke_hf import visualization as vis


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    lab = rng.integers(0, constants.NUM_LABELS, size=(20, 30)).astype(np.uint8)
    lab[0, :6] = np.arange(6)  # every label present
    return lab


def test_colorize_uses_the_package_palette(labels):
    rgb = vis.colorize(labels)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    for k, colour in enumerate(constants.PALETTE):
        assert (rgb[labels == k] == colour).all(), constants.CLASS_NAMES[k]


def test_colorize_ignore_and_unknown_labels(labels):
    lab = labels.astype(np.int64)
    lab[3, 4] = constants.IGNORE_INDEX
    assert tuple(vis.colorize(lab)[3, 4]) == vis.IGNORE_COLOR
    lab[5, 7] = 9
    with pytest.raises(ValueError, match=r"unknown labels \[9\].*\(5, 7\)"):
        vis.colorize(lab)
    with pytest.raises(ValueError, match="2-D"):
        vis.colorize(np.zeros((2, 3, 4), dtype=np.uint8))


def test_overlay_blends_palette_and_keeps_background(labels):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
    out = vis.overlay(image, labels, alpha=0.3)
    fg = labels > 0
    palette = np.asarray(constants.PALETTE, dtype=np.float64)
    expected = 0.7 * image.astype(np.float64) + 0.3 * palette[labels]
    assert np.abs(out[fg].astype(np.float64) - expected[fg]).max() <= 0.5 + 1e-9
    assert (out[~fg] == image[~fg]).all()
    # alpha=1: exactly the palette on nuclei; ignore_background=False: background painted black too
    full = vis.overlay(image, labels, alpha=1.0, ignore_background=False)
    assert (full == palette[labels].astype(np.uint8)).all()
    with pytest.raises(ValueError, match="differ in size"):
        vis.overlay(image, labels[:10])


@pytest.mark.parametrize(
    ("make", "expected_grey"),
    [
        (lambda: Image.fromarray(np.full((4, 5), 100, np.uint8)), 100),  # L
        (lambda: Image.fromarray(np.full((4, 5), 65535, np.uint16)), 255),  # I;16
        (lambda: np.full((4, 5), 257 * 40, np.uint16), 40),  # 16-bit numpy
        (lambda: np.full((4, 5, 3), 12.4), 12),  # float 0-255 (images.npy)
        (lambda: np.full((4, 5), 0.2, np.float32), 51),  # float 0-1
        (lambda: Image.fromarray(np.full((4, 5), 257 * 90, np.int32), "I"), 90),  # 16-bit PNG opened as "I"
        (lambda: Image.fromarray(np.full((4, 5), 90, np.int32), "I"), 90),  # 8-bit values in an "I" image
        (lambda: np.concatenate([np.full((4, 5, 3), 0, np.uint8), np.full((4, 5, 1), 0, np.uint8)], -1), 255),
    ],
)
def test_to_rgb_uint8_modes(make, expected_grey):
    rgb = vis.to_rgb_uint8(make())
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert (rgb == expected_grey).all()


def test_to_rgb_uint8_rgba_composites_over_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128  # half transparent red-ish over white
    rgb = vis.to_rgb_uint8(Image.fromarray(rgba, "RGBA"))
    a = 128 / 255
    assert tuple(rgb[0, 0]) == (round(200 * a + 255 * (1 - a)), round(255 * (1 - a)), round(255 * (1 - a)))


def test_to_rgb_uint8_rejects_bad_input():
    bad = np.zeros((3, 3, 3))
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"patch_7: non-finite pixel value at index \(1, 2, 0\)"):
        vis.to_rgb_uint8(bad, name="patch_7")
    with pytest.raises(ValueError, match="shape"):
        vis.to_rgb_uint8(np.zeros((3, 3, 7)))
    with pytest.raises(ValueError, match="empty"):
        vis.to_rgb_uint8(np.zeros((0, 3, 3)))


def test_instance_outlines_follow_instances_and_class_colours():
    inst = np.zeros((12, 12), np.uint16)
    inst[2:7, 2:7] = 1  # a 5x5 square
    inst[7:11, 5:9] = 2  # touching square below
    image = np.full((12, 12, 3), 50, np.uint8)
    out = vis.instance_outlines(image, inst, labels=[3, 5])
    edge_1 = np.zeros((12, 12), bool)
    edge_1[2:7, 2:7] = True
    edge_1[3:6, 3:6] = False  # interior of square 1 stays untouched
    assert (out[edge_1] == constants.PALETTE[3]).all()
    assert (out[4, 4] == 50).all()
    assert (out[inst == 0] == 50).all()
    assert (out[10, 5] == constants.PALETTE[5]).all()  # bottom-left corner of instance 2
    assert (out[8:10, 6:8] == 50).all()  # interior of instance 2
    with pytest.raises(ValueError, match="id 2 but only 1 instance labels"):
        vis.instance_outlines(image, inst, labels=[3])
    plain = vis.instance_outlines(image, inst)
    assert (plain[edge_1] == 255).all()
    thick = vis.instance_outlines(image, inst, thickness=2)
    ring_2 = np.zeros((12, 12), bool)
    ring_2[2:7, 2:7] = True
    ring_2[4, 4] = False  # a 2-pixel ring leaves only the centre of the 5x5 square
    assert (thick[ring_2] == 255).all() and (thick[4, 4] == 50).all()


def test_error_categories_and_map():
    ref = np.array([[0, 0, 1, 1, 2, 255]])
    pred = np.array([[0, 3, 1, 0, 4, 2]])
    codes = vis.error_categories(pred, ref)
    assert codes.tolist() == [[0, 3, 1, 4, 2, 5]]
    colours = vis.error_map(pred, ref)
    for j, code in enumerate(codes[0]):
        assert tuple(colours[0, j]) == vis.ERROR_CATEGORIES[code][1]


def test_legends_use_full_class_names_and_palette():
    handles = vis.legend_handles()
    assert [h.get_label() for h in handles] == list(constants.CLASS_FULL_NAMES)
    for h, colour in zip(handles, constants.PALETTE):
        assert np.allclose(h.get_facecolor()[:3], np.asarray(colour) / 255)
    img = vis.legend_image(range(1, 6), swatch=10)
    assert img.shape[0] == 5 * 14 + 4
    # the swatch of row i is filled with the palette colour of class i+1
    for i, k in enumerate(range(1, 6)):
        assert tuple(img[4 + i * 14 + 5, 4 + 5]) == constants.PALETTE[k]


def test_figures_draw(labels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.random.default_rng(2).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    fig = vis.plot_patch_grid([img, img, img], [labels] * 3, titles=["a", "b", "c"], ncols=2)
    assert len([a for a in fig.axes if a.images]) == 3
    assert [t.get_text() for t in fig.legends[0].get_texts()] == list(constants.CLASS_FULL_NAMES[1:])
    cm = np.arange(36).reshape(6, 6)
    fig2 = vis.plot_confusion_matrix(cm)
    shown = fig2.axes[0].images[0].get_array()
    assert np.allclose(np.asarray(shown).sum(axis=1), 1.0)
    fig3 = vis.plot_class_bars({"IoU": [1, 2, 3, 4, np.nan, 6], "Dice": [1, 2, 3, 4, 5, 6]})
    assert len(fig3.axes[0].patches) == 12
    history = [
        {"loss": 2.0, "step": 1},
        {"loss": 1.0, "step": 2},
        {"eval_loss": 1.5, "eval_mean_iou": 0.3, "step": 2},
    ]
    fig4 = vis.plot_training_curves(history)
    assert [ln.get_label() for ln in fig4.axes[1].lines] == ["mean_iou"]
    assert list(fig4.axes[0].lines[0].get_ydata()) == [2.0, 1.0]
    plt.close("all")


def test_summarize_patches_counts_pixels_nuclei_and_areas():
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "tissue": datasets.ClassLabel(names=list(constants.TISSUES)),
            "semantic_mask": datasets.Image(),
            "instance_mask": datasets.Image(),
            "instance_labels": datasets.Sequence(datasets.ClassLabel(names=list(constants.CLASS_NAMES))),
        }
    )
    inst = np.zeros((8, 8), np.uint16)
    inst[0:2, 0:3] = 1  # 6 px, neoplastic
    inst[4:8, 4:8] = 2  # 16 px, dead
    inst[6, 0] = 3  # 1 px, neoplastic
    sem = np.zeros((8, 8), np.uint8)
    for k, lab in enumerate([1, 4, 1], start=1):
        sem[inst == k] = lab
    rows = {
        "id": ["fold1_0000", "fold1_0001"],
        "tissue": [constants.TISSUES.index("Colon"), constants.TISSUES.index("Breast")],
        "semantic_mask": [Image.fromarray(sem), Image.fromarray(np.zeros((8, 8), np.uint8))],
        "instance_mask": [Image.fromarray(inst), Image.fromarray(np.zeros((8, 8), np.uint16))],
        "instance_labels": [[1, 4, 1], []],
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    patches, nuclei = vis.summarize_patches({"fold1": ds})
    first = patches.iloc[0]
    assert first["tissue"] == "Colon" and patches.iloc[1]["tissue"] == "Breast"
    assert (first["pixels_background"], first["pixels_neoplastic"], first["pixels_dead"]) == (64 - 23, 7, 16)
    assert (first["nuclei_neoplastic"], first["nuclei_dead"], first["nuclei_inflammatory"]) == (2, 1, 0)
    assert patches.iloc[1]["pixels_background"] == 64 and patches.iloc[1]["nuclei_neoplastic"] == 0
    assert nuclei["class"].tolist() == ["neoplastic", "dead", "neoplastic"]
    assert nuclei["area_px"].tolist() == [6, 16, 1]
    assert np.allclose(nuclei["area_um2"], np.array([6, 16, 1]) * constants.MICRONS_PER_PIXEL**2)


def test_instance_outlines_accept_segments_info_and_mappings():
    ids = np.zeros((20, 20), dtype=np.int32)
    ids[2:8, 2:8] = 1
    ids[10:18, 10:18] = 2
    image = np.full((20, 20, 3), 200, np.uint8)
    segments = [{"id": 1, "label_id": 3, "score": 0.9}, {"id": 2, "label_id": 5, "score": 0.8}]
    from_segments = vis.instance_outlines(image, ids, segments)
    assert (from_segments[2, 2:8] == constants.PALETTE[3]).all()  # top edge of nucleus 1
    assert (from_segments[10, 10:18] == constants.PALETTE[5]).all()
    assert (from_segments[5, 5] == 200).all()  # inside: untouched
    assert np.array_equal(from_segments, vis.instance_outlines(image, ids, {1: 3, 2: 5}))
    assert np.array_equal(from_segments, vis.instance_outlines(image, ids, [3, 5]))
    with pytest.raises(ValueError, match="id 2"):
        vis.instance_outlines(image, ids, [3])


def test_instance_comparison_and_tissue_pq_figures():
    import matplotlib

    matplotlib.use("Agg")
    ids = np.zeros((20, 20), dtype=np.int32)
    ids[2:8, 2:8] = 1
    pred = np.zeros_like(ids)
    pred[3:8, 2:9] = 1
    pred[12:15, 12:15] = 2
    fig = vis.plot_instance_comparison(np.zeros((20, 20, 3), np.uint8), ids, [1], pred, {1: 1, 2: 4})
    titles = [ax.get_title() for ax in fig.axes[:3]]
    assert titles == ["image", "ground truth (1 nuclei)", "prediction (2 nuclei)"]
    shown = fig.axes[2].images[0].get_array()
    assert tuple(shown[12, 12]) == constants.PALETTE[4]
    per_tissue = {"Colon": {"bPQ": 0.6, "mPQ": 0.4}, "Breast": {"bPQ": 0.7, "mPQ": float("nan")}}
    fig = vis.plot_tissue_pq(per_tissue)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Breast", "Colon"]
    widths = [round(p.get_width(), 6) for p in ax.patches]
    assert widths == [0.7, 0.6, 0.0, 0.4]  # bPQ bars, then mPQ bars (NaN drawn empty)
    means = sorted(round(line.get_xdata()[0], 6) for line in ax.lines)
    assert means == [0.4, 0.65]
