"""Instance post-processing: nuclei from class probabilities (watershed) and from distance maps (hv).

Inputs are hand-built maps whose nuclei are known: discs and ellipses drawn with scikit-image,
probabilities made from label maps, distance maps computed here from their definition (each
nucleus pixel's offset from its nucleus's centre, scaled to [-1, 1] per nucleus).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage.draw import disk, ellipse

from pannuke_hf.models.unet_fcn.image_processing_unet_fcn import (
    UNetFCNImageProcessor,
    hv_to_instances,
    semantic_to_instances,
)

NUM_LABELS = 6


def probabilities(labels: np.ndarray, p: float = 0.8) -> np.ndarray:
    """(6, H, W) probabilities: ``p`` on each pixel's label, the rest shared equally."""
    probs = np.full((NUM_LABELS, *labels.shape), (1 - p) / (NUM_LABELS - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[None], p, axis=0)
    return probs


def hv_maps(instances: np.ndarray) -> np.ndarray:
    """(2, H, W) distance maps from the definition: offset from the nucleus centre / largest offset."""
    hv = np.zeros((2, *instances.shape), dtype=np.float32)
    rows, cols = np.indices(instances.shape)
    for k in np.unique(instances[instances > 0]):
        inside = instances == k
        for channel, coords in ((0, cols), (1, rows)):
            offset = coords[inside] - coords[inside].mean()
            hv[channel][inside] = offset / np.abs(offset).max()
    return hv


def draw(shape, *shapes) -> np.ndarray:
    """Instance map with shape k (("disk", centre, radius) or ("ellipse", centre, radii, rotation)) as id k."""
    instances = np.zeros(shape, dtype=np.int32)
    for k, spec in enumerate(shapes, start=1):
        if spec[0] == "disk":
            rr, cc = disk(spec[1], spec[2], shape=shape)
        else:
            rr, cc = ellipse(*spec[1], *spec[2], shape=shape, rotation=spec[3])
        instances[rr, cc] = k
    return instances


def best_iou(pred: np.ndarray, true_mask: np.ndarray) -> tuple[int, float]:
    """The predicted id overlapping ``true_mask`` most and its IoU."""
    ids, counts = np.unique(pred[true_mask], return_counts=True)
    counts = counts[ids > 0]
    ids = ids[ids > 0]
    if len(ids) == 0:
        return 0, 0.0
    k = int(ids[counts.argmax()])
    inter = counts.max()
    return k, inter / ((pred == k) | true_mask).sum()


TOUCHING = (("disk", (32, 22), 8), ("disk", (32, 36), 8))  # centres 14 px apart: a 7-px neck


# ---------------------------------------------------------------------------------------------
# Semantic path
# ---------------------------------------------------------------------------------------------


def test_two_touching_discs_of_one_class_become_two_nuclei():
    true = draw((64, 64), *TOUCHING)
    labels = np.where(true > 0, 1, 0)  # both neoplastic: one blob in the label map
    instances, segments = semantic_to_instances(probabilities(labels))
    assert instances.dtype == np.int32 and instances.shape == (64, 64)
    assert len(segments) == 2 and instances.max() == 2
    matched = [best_iou(instances, true == k) for k in (1, 2)]
    assert matched[0][0] != matched[1][0]
    assert min(iou for _, iou in matched) > 0.85
    assert np.array_equal(instances > 0, true > 0)  # no pixel lost by the split
    assert [s["label_id"] for s in segments] == [1, 1]
    # the watershed is what splits them
    plain, plain_segments = semantic_to_instances(probabilities(labels), watershed=False)
    assert plain.max() == 1 and len(plain_segments) == 1


@pytest.mark.parametrize(("radii", "rotation"), [((5, 18), 0.5), ((3, 14), 1.0), ((7, 14), 0.2)])
def test_one_elongated_nucleus_is_not_split(radii, rotation):
    true = draw((64, 64), ("ellipse", (32, 32), radii, rotation))
    instances, segments = semantic_to_instances(probabilities(np.where(true > 0, 3, 0)))
    assert len(segments) == 1
    assert np.array_equal(instances, true)


def test_touching_nuclei_of_different_classes_stay_apart():
    true = draw((64, 64), *TOUCHING)
    labels = np.choose(true, [0, 2, 5])
    instances, segments = semantic_to_instances(probabilities(labels), watershed=False)
    assert np.array_equal(instances, true)
    assert [s["label_id"] for s in segments] == [2, 5]


def test_nucleus_under_min_size_is_dropped():
    labels = np.zeros((40, 40), dtype=np.int64)
    labels[5:8, 5:8] = 2  # 9 pixels
    labels[20:30, 20:30] = 4  # 100 pixels
    instances, segments = semantic_to_instances(probabilities(labels), min_size=10)
    assert [(s["id"], s["label_id"]) for s in segments] == [(1, 4)]
    assert np.array_equal(instances == 1, labels == 4) and instances.max() == 1
    kept, kept_segments = semantic_to_instances(probabilities(labels), min_size=9)
    assert [s["label_id"] for s in kept_segments] == [2, 4]


def test_ids_follow_raster_order_of_first_pixel_not_class_order():
    labels = np.zeros((30, 30), dtype=np.int64)
    labels[2:8, 20:26] = 5  # first row 2: id 1 although its class is the last
    labels[4:10, 2:8] = 1  # first row 4: id 2
    labels[15:20, 10:15] = 3  # id 3
    instances, segments = semantic_to_instances(probabilities(labels))
    assert [(s["id"], s["label_id"]) for s in segments] == [(1, 5), (2, 1), (3, 3)]
    assert instances[2, 20] == 1 and instances[4, 2] == 2 and instances[15, 10] == 3
    again, _ = semantic_to_instances(probabilities(labels))
    assert np.array_equal(instances, again)


def test_score_is_the_mean_class_probability_over_the_nucleus():
    labels = np.zeros((20, 20), dtype=np.int64)
    labels[5:10, 5:10] = 2
    labels[12:16, 12:18] = 4
    probs = probabilities(labels, p=0.6)
    probs[2, 5:10, 5:7] = 0.9  # 10 of 25 pixels more confident (still the arg-max)
    _, segments = semantic_to_instances(probs)
    assert segments[0]["score"] == pytest.approx((10 * 0.9 + 15 * 0.6) / 25, rel=1e-6)
    assert segments[1]["score"] == pytest.approx(0.6, rel=1e-6)
    assert segments[0]["was_fused"] is False


def test_bad_probabilities_raise():
    with pytest.raises(ValueError, match="probabilities"):
        semantic_to_instances(np.zeros((10, 10), dtype=np.float32))
    bad = probabilities(np.zeros((8, 8), dtype=np.int64))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        semantic_to_instances(bad)


# ---------------------------------------------------------------------------------------------
# Distance-map (hv) path
# ---------------------------------------------------------------------------------------------


def test_hv_path_splits_two_touching_discs_with_perfect_maps():
    true = draw((64, 64), *TOUCHING)
    labels = np.where(true > 0, 1, 0)
    instances, segments = hv_to_instances(probabilities(labels), (true > 0).astype(np.float32), hv_maps(true))
    assert len(segments) == 2
    matched = [best_iou(instances, true == k) for k in (1, 2)]
    assert matched[0][0] != matched[1][0]
    assert min(iou for _, iou in matched) > 0.9


def test_hv_path_many_touching_nuclei_and_one_large_one():
    true = draw(
        (96, 96),
        ("disk", (20, 20), 7),
        ("disk", (20, 32), 6),
        ("disk", (31, 26), 6),
        ("ellipse", (70, 60), (6, 16), 0.4),
        ("disk", (60, 20), 14),
    )
    labels = np.where(true > 0, 3, 0)
    instances, segments = hv_to_instances(probabilities(labels), (true > 0).astype(np.float32), hv_maps(true))
    assert len(segments) == 5
    for k in range(1, 6):
        assert best_iou(instances, true == k)[1] > 0.85, k


def test_hv_class_by_majority_vote_with_the_background_rule():
    true = draw((64, 64), ("disk", (15, 15), 8), ("disk", (15, 45), 8), ("disk", (45, 30), 8))
    labels = np.zeros((64, 64), dtype=np.int64)
    rows, cols = np.indices(labels.shape)
    # nucleus 1: 2/3 class 4, 1/3 class 2 -> 4
    labels[(true == 1) & (cols < 19)] = 4
    labels[(true == 1) & (cols >= 19)] = 2
    # nucleus 2: mostly background, then class 3 more than class 1 -> 3 (second most frequent),
    # although its few class-1 pixels are so confident that class 1 has the higher mean probability
    labels[(true == 2) & (rows > 17)] = 3
    labels[(true == 2) & (rows > 17) & (cols > 47)] = 1
    # nucleus 3: every pixel background in the type map -> nucleus class of highest mean probability
    probs = probabilities(labels, p=0.3)
    confident = (true == 2) & (labels == 1)
    probs[:, confident] = 0.0
    probs[1, confident] = 1.0
    probs[5, true == 3] += 0.05
    probs /= probs.sum(axis=0, keepdims=True)
    nucleus_1, nucleus_2 = true == 1, true == 2
    assert (labels[nucleus_1] == 4).sum() > (labels[nucleus_1] == 2).sum() > 0
    counts = np.bincount(labels[nucleus_2], minlength=6)
    assert counts[0] > counts[3] > counts[1] > 0
    assert probs[1][nucleus_2].mean() > probs[3][nucleus_2].mean()
    instances, segments = hv_to_instances(probs, (true > 0).astype(np.float32), hv_maps(true))
    assert [s["label_id"] for s in segments] == [4, 3, 5]
    # score: mean probability of the chosen class over the nucleus
    expected = probs[3][instances == 2].mean()
    assert segments[1]["score"] == pytest.approx(float(expected), rel=1e-5)


def test_hv_path_threshold_and_min_size():
    true = draw((40, 40), ("disk", (10, 10), 6), ("disk", (30, 30), 1.5))
    nuclei = np.where(true == 1, 0.7, np.where(true == 2, 0.9, 0.1)).astype(np.float32)
    probs = probabilities(np.where(true > 0, 2, 0))
    instances, segments = hv_to_instances(probs, nuclei, hv_maps(true), min_size=10)
    assert len(segments) == 1 and np.array_equal(instances, (true == 1).astype(np.int32))
    _, segments = hv_to_instances(probs, nuclei, hv_maps(true), min_size=3)
    assert len(segments) == 2
    instances, segments = hv_to_instances(probs, nuclei, hv_maps(true), min_size=3, nucleus_threshold=0.8)
    assert len(segments) == 1 and np.array_equal(instances > 0, true == 2)
    empty, none = hv_to_instances(probs, np.zeros((40, 40), np.float32), hv_maps(true))
    assert none == [] and not empty.any()


def test_hv_path_checks_shapes():
    probs = probabilities(np.zeros((16, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="hv"):
        hv_to_instances(probs, np.zeros((16, 16)), np.zeros((2, 16, 15)))
    with pytest.raises(ValueError, match="nuclei_probability"):
        hv_to_instances(probs, np.zeros((15, 16)), np.zeros((2, 16, 16)))


# ---------------------------------------------------------------------------------------------
# The processor method
# ---------------------------------------------------------------------------------------------


def logits_of(labels: np.ndarray) -> torch.Tensor:
    """(1, 6, H, W) logits whose arg-max is ``labels``."""
    return torch.from_numpy(np.log(probabilities(labels)))[None]


def test_post_process_semantic_path_form_sizes_and_threshold():
    # one input per image (no windows): target_sizes resize each row's logits
    processor = UNetFCNImageProcessor(do_tile=False)
    labels = np.zeros((32, 32), dtype=np.int64)
    labels[4:12, 4:12] = 1
    labels[20:28, 16:30] = 3
    logits = logits_of(labels)
    logits[0, 3, 20:28, 16:30] -= 0.5  # the second nucleus is less confident
    out = SimpleNamespace(logits=torch.cat([logits, logits]))
    results = processor.post_process_instance_segmentation(out, target_sizes=[(64, 64), (32, 32)])
    assert len(results) == 2
    big, small = results
    assert big["segmentation"].dtype == torch.int32 and tuple(big["segmentation"].shape) == (64, 64)
    assert tuple(small["segmentation"].shape) == (32, 32)
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in small["segments_info"]] == [
        (1, 1, False),
        (2, 3, False),
    ]
    assert np.array_equal(small["segmentation"].numpy() == 1, labels == 1)
    # bilinear resize to 2x: each square doubles (up to its boundary pixels)
    assert abs(int((big["segmentation"] == 1).sum()) - 4 * 64) <= 4 * 16
    scores = [s["score"] for s in small["segments_info"]]
    assert scores[0] > scores[1]
    # threshold keeps the confident nucleus only and renumbers from 1
    kept = processor.post_process_instance_segmentation(out, threshold=(scores[0] + scores[1]) / 2)[0]
    assert [(s["id"], s["label_id"]) for s in kept["segments_info"]] == [(1, 1)]
    assert np.array_equal(kept["segmentation"].numpy() == 1, labels == 1) and kept["segmentation"].max() == 1
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_instance_segmentation(out, target_sizes=[(32, 32)])


def test_post_process_uses_the_hv_path_when_the_model_has_the_head():
    true = draw((64, 64), *TOUCHING)
    labels = np.where(true > 0, 1, 0)
    nucleus = np.stack([true == 0, true > 0]).astype(np.float32) * 8 - 4  # logits: +-4
    out = {
        "logits": logits_of(labels),
        "nuclei_logits": torch.from_numpy(nucleus)[None],
        "hv_maps": torch.from_numpy(hv_maps(true))[None],
    }
    processor = UNetFCNImageProcessor()
    result = processor.post_process_instance_segmentation(out)[0]
    assert len(result["segments_info"]) == 2
    # a type map with one round blob over both discs: the semantic path finds one nucleus, the
    # hv path (nucleus map and distance maps of the two discs) still two
    blob = np.zeros_like(labels)
    blob[disk((32, 29), 14)] = 1
    out["logits"] = logits_of(blob)
    hv_result = processor.post_process_instance_segmentation(out)[0]
    semantic_result = processor.post_process_instance_segmentation({"logits": out["logits"]})[0]
    assert len(semantic_result["segments_info"]) == 1
    assert len(hv_result["segments_info"]) == 2
    with pytest.raises(ValueError, match="nuclei_logits"):
        processor.post_process_instance_segmentation({"logits": out["logits"], "hv_maps": out["hv_maps"]})


# ---------------------------------------------------------------------------------------------
# The image-segmentation pipeline
# ---------------------------------------------------------------------------------------------


def test_pipeline_instance_subtask_returns_one_entry_per_nucleus(tmp_path):
    import PIL.Image
    from transformers import pipeline

    from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation

    torch.manual_seed(0)
    config = UNetFCNConfig(
        base_channels=4,
        num_stages=2,
        encoder_num_convs=[1, 1],
        decoder_num_convs=[1],
        strides=[1, 1],
        downsamples=[True],
        encoder_dilations=[1, 1],
        decoder_dilations=[1],
        head_channels=4,
    )
    model = UNetFCNForSemanticSegmentation(config).eval()
    with torch.no_grad():  # a classifier scaled up so that several classes win in blobs
        model.decode_head.classifier.weight.normal_(0, 3.0)
    model.save_pretrained(tmp_path)
    processor = UNetFCNImageProcessor(size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(coarse).resize((80, 96), PIL.Image.BILINEAR)

    segmenter = pipeline("image-segmentation", model=str(tmp_path))
    results = segmenter(image, subtask="instance", threshold=0.0)
    # expected: processor -> model -> the processor's instance post-processing at the image size
    with torch.no_grad():
        outputs = model(**processor(image, return_tensors="pt"))
    expected = processor.post_process_instance_segmentation(outputs, target_sizes=[(96, 80)])[0]
    segments = expected["segments_info"]
    assert len(segments) >= 3
    assert len(results) == len(segments)
    for result, segment in zip(results, segments):
        assert result["label"] == model.config.id2label[segment["label_id"]] != "background"
        assert result["score"] == pytest.approx(segment["score"])
        mask = np.asarray(result["mask"])
        assert mask.shape == (96, 80)
        np.testing.assert_array_equal(mask == 255, expected["segmentation"].numpy() == segment["id"])
    # the pipeline's default score threshold (0.9) keeps the confident nuclei only
    confident = segmenter(image, subtask="instance")
    assert len(confident) == sum(s["score"] >= 0.9 for s in segments)
    # the per-class maps stay available
    semantic = segmenter(image, subtask="semantic")
    assert all(r["score"] is None for r in semantic)
