"""PanNuke's nucleus-level scores against a plain per-pair loop written here from the definitions.

The reference below follows the protocol text (pannuke-facts section 5) step by step: one boolean
mask per nucleus, IoU of every (true, predicted) pair, match when IoU > 0.5, DQ / SQ / PQ with the
official epsilon; the binary map built channel by channel, id by id, later nuclei overwriting;
class PQ per channel; centroids as mean pixel coordinates, paired by an assignment over all
distances and kept within the radius; per-tissue then over-tissue averages.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from pannuke_hf.metrics.pq import PanNukeInstanceMetrics, panoptic_quality
from pannuke_hf.nuclei import NucleiInputError

EPS = 1e-6
CLASSES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")

# ---------------------------------------------------------------------------------------------
# The reference: a per-pair loop from the definitions
# ---------------------------------------------------------------------------------------------


def ref_pq(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    true_ids = [i for i in np.unique(true).tolist() if i != 0]
    pred_ids = [j for j in np.unique(pred).tolist() if j != 0]
    if not true_ids:
        return (math.nan,) * 3
    tp, iou_sum = 0, 0.0
    for i in true_ids:
        t_mask = true == i
        for j in pred_ids:
            p_mask = pred == j
            inter = np.logical_and(t_mask, p_mask).sum()
            if inter == 0:
                continue
            iou = inter / np.logical_or(t_mask, p_mask).sum()
            if iou > 0.5:
                tp += 1
                iou_sum += iou
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + EPS)
    return dq * sq, dq, sq


def ref_binarize(release: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    out = np.zeros(release.shape[:2], dtype=np.int64)
    classes, count = {}, 1
    for c in range(5):
        for raw_id in np.unique(release[:, :, c]):
            if raw_id == 0:
                continue
            out[release[:, :, c] == raw_id] = count
            classes[count] = c + 1
            count += 1
    return out, classes


def ref_centroids(instance: np.ndarray) -> dict[int, np.ndarray]:
    return {int(i): np.argwhere(instance == i).mean(axis=0) for i in np.unique(instance) if i != 0}


def ref_f1_counts(t_inst, t_cls, p_inst, p_cls, radius=12.0):
    tc, pc = ref_centroids(t_inst), ref_centroids(p_inst)
    t_keys, p_keys = list(tc), list(pc)
    pairs = []
    if t_keys and p_keys:
        dist = np.array([[np.linalg.norm(tc[a] - pc[b]) for b in p_keys] for a in t_keys])
        rows, cols = linear_sum_assignment(dist)
        pairs = [(t_keys[r], p_keys[c]) for r, c in zip(rows, cols) if dist[r, c] <= radius]
    det = np.array([len(pairs), len(p_keys) - len(pairs), len(t_keys) - len(pairs)])
    per_class = np.zeros((5, 5), dtype=int)
    paired_t = {a for a, _ in pairs}
    paired_p = {b for _, b in pairs}
    for c in range(1, 6):
        for a, b in pairs:
            per_class[c - 1, 0] += t_cls[a] == c and p_cls[b] == c
            per_class[c - 1, 1] += p_cls[b] == c and t_cls[a] != c
            per_class[c - 1, 2] += t_cls[a] == c and p_cls[b] != c
        per_class[c - 1, 3] = sum(1 for b in p_keys if b not in paired_p and p_cls[b] == c)
        per_class[c - 1, 4] = sum(1 for a in t_keys if a not in paired_t and t_cls[a] == c)
    return det, per_class


def ref_image(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tb, tcls = ref_binarize(true)
    pb, pcls = ref_binarize(pred)
    out = {"bPQ": ref_pq(tb, pb)[0]}
    pqs = []
    for c, name in enumerate(CLASSES):
        if not (true[:, :, c] > 0).any():
            pq = math.nan
        elif not (pred[:, :, c] > 0).any():
            pq = 0.0
        else:
            pq = ref_pq(true[:, :, c], pred[:, :, c])[0]
        out[f"PQ_{name}"] = pq
        pqs.append(pq)
    out["mPQ"] = math.nan if all(math.isnan(v) for v in pqs) else float(np.nanmean(pqs))
    out["_f1"] = ref_f1_counts(tb, tcls, pb, pcls)
    return out


def ref_set(pairs, tissues) -> dict[str, float]:
    images = [ref_image(t, p) for t, p in pairs]
    by_tissue: dict[str, list[dict]] = {}
    for row, tissue in zip(images, tissues):
        by_tissue.setdefault(tissue, []).append(row)

    def nanmean(values):
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan

    out = {
        "mPQ": nanmean([nanmean([r["mPQ"] for r in rows]) for rows in by_tissue.values()]),
        "bPQ": nanmean([nanmean([r["bPQ"] for r in rows]) for rows in by_tissue.values()]),
        "mPQ_image": nanmean([r["mPQ"] for r in images]),
        "bPQ_image": nanmean([r["bPQ"] for r in images]),
    }
    for name in CLASSES:
        out[f"PQ_{name}"] = nanmean([r[f"PQ_{name}"] for r in images])
    det = sum(r["_f1"][0] for r in images)
    per_class = sum(r["_f1"][1] for r in images)
    out["F1_detection"] = 2 * det[0] / (2 * det[0] + det[1] + det[2])
    for c, name in enumerate(CLASSES):
        tp, fp, fn, fpd, fnd = per_class[c]
        denominator = 2 * tp + 2 * fp + 2 * fn + fpd + fnd
        out[f"F1_{name}"] = 2 * tp / denominator if denominator else math.nan
    return out


# ---------------------------------------------------------------------------------------------
# Generated data
# ---------------------------------------------------------------------------------------------


def random_release(
    rng: np.random.Generator, size: int | tuple[int, int] = 64, nuclei: int = 14, overlap: bool = True
) -> np.ndarray:
    """Rectangles of random classes and ids (non-contiguous, up to 65535); some overlap."""
    height, width = (size, size) if isinstance(size, int) else size
    release = np.zeros((height, width, 6))
    for _ in range(nuclei):
        c = int(rng.integers(5))
        h, w = rng.integers(3, 12, 2)
        y, x = rng.integers(0, height - 3), rng.integers(0, width - 3)
        region = release[y : y + h, x : x + w, c]
        if not overlap and (release[y : y + h, x : x + w, :5] > 0).any():
            continue
        region[...] = int(rng.integers(1, 65536))
    release[..., 5] = (release[..., :5] == 0).all(axis=-1)
    return release


def perturb(rng: np.random.Generator, release: np.ndarray) -> np.ndarray:
    """A prediction: shifted nuclei, some dropped, some re-classed, some new."""
    pred = np.zeros_like(release)
    shift = rng.integers(-1, 2, 2)
    moved = np.roll(release[..., :5], tuple(shift), axis=(0, 1))
    for c in range(5):
        for raw_id in np.unique(moved[..., c]):
            if raw_id == 0 or rng.random() < 0.15:
                continue
            target = int(rng.integers(5)) if rng.random() < 0.2 else c
            pred[..., target][moved[..., c] == raw_id] = raw_id + 7 * target
    extra = random_release(rng, release.shape[:2], 3)
    pred[..., :5] = np.where(pred[..., :5] > 0, pred[..., :5], extra[..., :5])
    return pred


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------


def test_random_sets_match_the_reference():
    rng = np.random.default_rng(0)
    tissues = ["Breast", "Colon", "Breast", "Liver", "Colon", "Breast", "Liver", "Breast", "Colon", "Skin"]
    pairs = []
    for i in range(len(tissues)):
        true = random_release(rng)
        pred = perturb(rng, true) if i != 3 else np.zeros_like(true)
        pairs.append((true, pred))
    metric = PanNukeInstanceMetrics()
    for (true, pred), tissue in zip(pairs, tissues):
        image = metric.update_release(true, pred, tissue)
        expected = ref_image(true, pred)
        for key in ("bPQ", "mPQ", *(f"PQ_{n}" for n in CLASSES)):
            np.testing.assert_allclose(image[key], expected[key], rtol=0, atol=1e-12, err_msg=key)
    results = metric.compute()
    expected = ref_set(pairs, tissues)
    for key, value in expected.items():
        np.testing.assert_allclose(results[key], value, rtol=0, atol=1e-12, err_msg=key)
    assert results["num_images"] == 10 and results["num_tissues"] == 4
    # The random cases exercise what they should: overlapping channels, matched and missed nuclei.
    assert any(((t[..., :5] > 0).sum(-1) > 1).any() for t, _ in pairs)
    assert 0.2 < results["bPQ"] < 0.95


def test_instance_form_matches_the_release_form_without_overlaps():
    from pannuke_hf.nuclei import release_to_instances

    rng = np.random.default_rng(1)
    a, b = PanNukeInstanceMetrics(), PanNukeInstanceMetrics()
    for _ in range(6):
        true = random_release(rng, overlap=False)
        pred = random_release(rng, overlap=False) if rng.random() < 0.3 else true.copy()
        pred[: int(rng.integers(0, 30))] = 0
        a.update_release(true, pred, "Kidney")
        b.update(*release_to_instances(true), *release_to_instances(pred), tissue="Kidney")
    ra, rb = a.compute(), b.compute()
    for key in ("mPQ", "bPQ", "F1_detection", "PQ_dead", "F1_epithelial"):
        np.testing.assert_allclose(ra[key], rb[key], atol=1e-12, err_msg=key)


# ---------------------------------------------------------------------------------------------
# Hand-made cases with stated answers
# ---------------------------------------------------------------------------------------------


def square(shape=(32, 32), box=(2, 2, 10, 10), value=1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    y0, x0, y1, x1 = box
    out[y0:y1, x0:x1] = value
    return out


def test_perfect_prediction_scores_one():
    truth = square(value=5) + square(box=(15, 15, 25, 20), value=9)
    result = panoptic_quality(truth, truth)
    assert result["TP"] == 2 and result["FP"] == result["FN"] == 0
    assert result["DQ"] == 1.0
    assert result["PQ"] == pytest.approx(2 / (2 + EPS), abs=1e-15)  # the official epsilon


def test_iou_of_exactly_one_half_does_not_match():
    truth = square(box=(0, 0, 4, 4))  # 16 px
    half = square(box=(0, 0, 2, 4))  # 8 px inside: IoU 8 / 16 = 0.5
    assert panoptic_quality(truth, half)["TP"] == 0
    assert panoptic_quality(truth, half)["PQ"] == 0.0
    above = square(box=(0, 0, 4, 4)) - square(box=(0, 0, 1, 1))  # 15 px: IoU 15/16
    assert panoptic_quality(truth, above)["TP"] == 1
    just = np.zeros((4, 4), dtype=int)
    just.flat[:9] = 1  # 9 of 16: IoU 9/16 > 0.5
    assert panoptic_quality(truth[:4, :4], just)["TP"] == 1


def test_false_positive_of_an_absent_class_is_ignored_by_class_pq_not_by_bpq():
    true = np.zeros((32, 32, 6))
    true[2:10, 2:10, 0] = 3  # one neoplastic nucleus
    pred = true.copy()
    pred[20:28, 20:28, 1] = 4  # an inflammatory nucleus the truth lacks
    image = PanNukeInstanceMetrics().update_release(true, pred)
    assert math.isnan(image["PQ_inflammatory"])
    assert image["PQ_neoplastic"] == pytest.approx(1 / (1 + EPS))
    assert image["mPQ"] == pytest.approx(1 / (1 + EPS))  # only the neoplastic class counts
    assert image["bPQ"] == pytest.approx(1 / (1 + 0.5) * 1 / (1 + EPS))  # the FP costs bPQ: DQ = 2/3


def test_split_and_merged_nuclei():
    whole = square(box=(0, 0, 10, 10))  # 100 px
    split = square(box=(0, 0, 10, 6), value=1) + square(box=(0, 6, 10, 10), value=2)  # 60 + 40 px
    # Split prediction: the 60 px part matches (IoU 0.6), the 40 px part is a FP.
    result = panoptic_quality(whole, split)
    assert (result["TP"], result["FP"], result["FN"]) == (1, 1, 0)
    assert result["PQ"] == pytest.approx((1 / 1.5) * 0.6 / (1 + EPS))
    # Merged prediction of two true nuclei: one TP (IoU 0.6), one FN.
    result = panoptic_quality(split, whole)
    assert (result["TP"], result["FP"], result["FN"]) == (1, 0, 1)
    assert result["PQ"] == pytest.approx((1 / 1.5) * 0.6 / (1 + EPS))


def test_large_and_non_contiguous_ids_equal_contiguous_ones():
    rng = np.random.default_rng(3)
    true = random_release(rng, nuclei=20)[..., :5].max(axis=-1).astype(np.int64)
    pred = np.roll(true, 1, axis=0)
    # Relabel: 0..K -> ids spread up to 65535 (order scrambled), and contiguous 1..K.
    for ids in (np.unique(true), np.unique(pred)):
        assert ids.max() > 1000
    lut = {v: i for i, v in enumerate(np.unique(np.concatenate([np.unique(true), np.unique(pred)])))}
    contiguous_t = np.vectorize(lut.get)(true)
    contiguous_p = np.vectorize(lut.get)(pred)
    spread = np.array(sorted(set(rng.choice(np.arange(1, 65536), size=len(lut) + 5, replace=False))))
    rng.shuffle(spread)
    spread[0] = 0
    big_t, big_p = spread[contiguous_t], spread[contiguous_p]
    assert big_t.max() <= 65535
    expected = ref_pq(true, pred)
    for t, p in (
        (true, pred),
        (contiguous_t, contiguous_p),
        (big_t, big_p),
        (big_t.astype(float), big_p.astype(np.uint16)),
    ):
        np.testing.assert_allclose(panoptic_quality(t, p)["PQ"], expected[0], atol=1e-12)
    # A single nucleus with id 65535 against one with id 1.
    assert panoptic_quality(square(value=65535), square(value=1))["TP"] == 1


def test_fully_overwritten_nucleus_counts_in_its_class_only():
    # Channel 0 nucleus id 5 is entirely covered by a connective nucleus (channel 2): it is absent
    # from the binary map but present in the neoplastic channel, as in the official script.
    true = np.zeros((32, 32, 6))
    true[4:8, 4:8, 0] = 5
    true[2:12, 2:12, 2] = 9
    true[20:26, 20:26, 0] = 6
    pred = true.copy()
    pred[4:8, 4:8, 0] = 0  # the prediction misses the hidden neoplastic nucleus
    image = PanNukeInstanceMetrics().update_release(true, pred)
    expected = ref_image(true, pred)
    assert image["PQ_neoplastic"] == pytest.approx(expected["PQ_neoplastic"])
    assert image["PQ_neoplastic"] == pytest.approx((1 / 1.5) * 1 / (1 + EPS))  # 1 TP, 1 FN
    assert image["bPQ"] == pytest.approx(2 / (2 + EPS))  # binary: both visible nuclei match


def test_empty_prediction_scores_zero_and_empty_truth_is_nan():
    truth = np.zeros((16, 16, 6))
    truth[2:6, 2:6, 3] = 11
    empty = np.zeros_like(truth)
    metric = PanNukeInstanceMetrics()
    image = metric.update_release(truth, empty)
    assert image["bPQ"] == 0.0 and image["PQ_dead"] == 0.0 and image["mPQ"] == 0.0
    assert math.isnan(image["PQ_neoplastic"])
    image = metric.update_release(empty, truth)
    assert math.isnan(image["bPQ"]) and math.isnan(image["mPQ"]) and math.isnan(image["PQ_dead"])
    results = metric.compute()
    assert results["bPQ_image"] == 0.0  # the NaN image is skipped, not counted as 0
    assert results["F1_detection"] == 0.0  # 1 FN + 1 FP, no TP
    image = metric.update_release(empty, empty)
    assert math.isnan(image["bPQ"])


def test_tissue_average_differs_from_image_average():
    truth = np.zeros((16, 16, 6))
    truth[2:8, 2:8, 0] = 1
    empty = np.zeros_like(truth)
    metric = PanNukeInstanceMetrics()
    metric.update_release(truth, truth, "Breast")  # bPQ ~1
    metric.update_release(truth, empty, "Breast")  # bPQ 0
    metric.update_release(truth, truth, "Colon")  # bPQ ~1
    results = metric.compute()
    one = 1 / (1 + EPS)
    assert results["bPQ"] == pytest.approx((one / 2 + one) / 2)  # Breast 0.5, Colon 1 -> 0.75
    assert results["bPQ_image"] == pytest.approx(2 * one / 3)
    assert results["mPQ"] == pytest.approx(0.75 * one)
    assert results["PQ_neoplastic"] == pytest.approx(2 * one / 3)  # class PQ: over images
    assert results["per_tissue"]["Breast"] == {
        "images": 2,
        "mPQ": pytest.approx(one / 2),
        "bPQ": pytest.approx(one / 2),
        "DQ": pytest.approx(0.5),
        "SQ": pytest.approx(one / 2),
    }
    assert results["per_tissue"]["Colon"]["images"] == 1


def test_f1_with_known_matches():
    # Truth: nuclei centred at (10, 10) class 1, (40, 40) class 2, (10, 40) class 3.
    # Prediction: (10, 13) class 2 -> paired with the first (distance 3), class differs;
    # (40, 55) class 2 -> distance 15 > 12, unpaired; (10, 40) class 3 -> exact.
    true = np.zeros((64, 64), dtype=int)
    pred = np.zeros((64, 64), dtype=int)
    true[8:13, 8:13] = 1
    true[38:43, 38:43] = 2
    true[8:13, 38:43] = 3
    pred[8:13, 11:16] = 1
    pred[38:43, 53:58] = 2
    pred[8:13, 38:43] = 3
    metric = PanNukeInstanceMetrics(radius=12)
    metric.update(true, {1: 1, 2: 2, 3: 3}, pred, {1: 2, 2: 2, 3: 3})
    r = metric.compute()
    assert r["counts"]["detection"] == {"TP": 2, "FP": 1, "FN": 1}
    assert r["F1_detection"] == pytest.approx(4 / 6)
    # Class 1: pair (1 -> 2) is FN_c; no unpaired class-1 nuclei: F1 = 0 / (2*1) = 0.
    assert r["counts"]["per_class"]["neoplastic"] == {"TP": 0, "FP": 0, "FN": 1, "FP_d": 0, "FN_d": 0}
    assert r["F1_neoplastic"] == 0.0
    # Class 2: the pair (1 -> 2) is FP_c; the unpaired prediction is FP_d; the unpaired truth FN_d.
    assert r["counts"]["per_class"]["inflammatory"] == {"TP": 0, "FP": 1, "FN": 0, "FP_d": 1, "FN_d": 1}
    assert r["F1_inflammatory"] == 0.0
    # Class 3: one TP, nothing else: F1 = 2 / 2 = 1.
    assert r["F1_connective"] == 1.0
    assert math.isnan(r["F1_dead"])
    # A radius of 16 pairs the far nucleus as well.
    wide = PanNukeInstanceMetrics(radius=16)
    wide.update(true, {1: 1, 2: 2, 3: 3}, pred, {1: 2, 2: 2, 3: 3})
    assert wide.compute()["counts"]["detection"] == {"TP": 3, "FP": 0, "FN": 0}


def test_f1_assignment_is_one_to_one_and_minimises_total_distance():
    # True nuclei at x=10 (A) and x=20 (B), predictions at x=19 (P) and x=29 (Q), row 10. Greedy
    # nearest-first pairing takes B-P (distance 1) and leaves A-Q (19 > 12): one TP. The assignment
    # minimising the total distance pairs A-P and B-Q (9 + 9 < 1 + 19): two TPs.
    true = np.zeros((21, 40), dtype=int)
    pred = np.zeros((21, 40), dtype=int)
    for value, x in ((1, 10), (2, 20)):
        true[9:12, x - 1 : x + 2] = value
    for value, x in ((1, 19), (2, 29)):
        pred[9:12, x - 1 : x + 2] = value
    metric = PanNukeInstanceMetrics()
    metric.update(true, [1, 2], pred, [1, 2])
    r = metric.compute()
    assert r["counts"]["detection"] == {"TP": 2, "FP": 0, "FN": 0}
    assert r["F1_neoplastic"] == 1.0 and r["F1_inflammatory"] == 1.0


def test_per_class_pq_uses_instance_classes_in_the_instance_form():
    true = square(box=(0, 0, 8, 8), value=4) + square(box=(10, 10, 18, 18), value=7)
    pred = true.copy()
    metric = PanNukeInstanceMetrics()
    image = metric.update(true, {4: 1, 7: 5, 99: 3}, pred, {4: 1, 7: 2})  # 99: absent id, ignored
    assert image["PQ_neoplastic"] == pytest.approx(1 / (1 + EPS))
    assert image["PQ_epithelial"] == 0.0  # the matched nucleus has the wrong class
    assert math.isnan(image["PQ_inflammatory"])  # absent from the truth: its FP is ignored
    assert image["bPQ"] == pytest.approx(2 / (2 + EPS))
    # A semantic map as the classes: majority vote.
    semantic = np.where(true == 4, 1, np.where(true == 7, 5, 0))
    image2 = PanNukeInstanceMetrics().update(true, semantic, pred, semantic)
    assert image2["mPQ"] == pytest.approx(1 / (1 + EPS))


# ---------------------------------------------------------------------------------------------
# Input validation, merging, streaming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((8, 8), np.nan), "NaN"),
        (np.full((8, 8), -1), "negative"),
        (np.full((8, 8), 1.5), "fractional"),
        (np.full((8, 8), np.inf), "infinite"),
        (np.full((8, 8), "a"), "numbers"),
    ],
)
def test_bad_ids_are_rejected_naming_the_image(bad, message):
    metric = PanNukeInstanceMetrics()
    good = np.zeros((8, 8), dtype=int)
    metric.update(good, {}, good, {})
    with pytest.raises(NucleiInputError, match=f"image 1.*{message}"):
        metric.update(good, {}, bad, {})
    with pytest.raises(NucleiInputError, match=f"image 7.*{message}"):
        metric.update(bad, {}, good, {}, index=7)


def test_bad_release_arrays_name_the_image_and_channel():
    metric = PanNukeInstanceMetrics()
    good = np.zeros((8, 8, 6))
    bad = good.copy()
    bad[3, 3, 2] = 0.25
    with pytest.raises(NucleiInputError, match=r"prediction: image 4: channel 2 \(connective\).*fractional"):
        metric.update_release(good, bad, index=4)
    with pytest.raises(NucleiInputError, match="differ in size"):
        metric.update_release(good, np.zeros((8, 9, 6)))
    with pytest.raises(NucleiInputError, match=r"\(H, W, 5\) or \(H, W, 6\)"):
        metric.update_release(good, np.zeros((8, 8, 4)))
    with pytest.raises(NucleiInputError, match="one shape"):
        metric.update(np.zeros((8, 8)), {}, np.zeros((8, 9)), {})
    with pytest.raises(NucleiInputError, match="nucleus 3 .*no class"):
        metric.update(square(value=3), {}, square(value=3), {3: 1})
    with pytest.raises(NucleiInputError, match="class 6 is outside 1..5"):
        metric.update(square(value=3), {3: 6}, square(value=3), {3: 1})
    assert metric.num_images == 0  # nothing half-counted


def test_any_size_float_and_int_inputs():
    rng = np.random.default_rng(5)
    true = random_release(rng, size=(37, 100), nuclei=25)  # not square
    pred = perturb(rng, true)
    a = PanNukeInstanceMetrics().update_release(true.astype(np.float32), pred.astype(np.int32))
    b = ref_image(true, pred)
    assert a["bPQ"] == pytest.approx(b["bPQ"], abs=1e-12)
    assert a["mPQ"] == pytest.approx(b["mPQ"], abs=1e-12)


def test_merge_equals_one_accumulator_and_reset_forgets():
    rng = np.random.default_rng(6)
    data = [(random_release(rng), None) for _ in range(6)]
    data = [(t, perturb(rng, t), tissue) for (t, _), tissue in zip(data, ["A", "B", "A", "C", "B", "A"])]
    whole = PanNukeInstanceMetrics()
    parts = [PanNukeInstanceMetrics(), PanNukeInstanceMetrics()]
    for i, (t, p, tissue) in enumerate(data):
        whole.update_release(t, p, tissue, index=i)
        parts[i % 2].update_release(t, p, tissue, index=i)
    merged = parts[1].merge(parts[0])
    a, b = whole.compute(), merged.compute()
    for key in ("mPQ", "bPQ", "mPQ_image", "F1_detection", "F1_dead", "PQ_dead"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-12)
    assert [row["index"] for row in merged.image_table()] == list(range(6))
    whole.reset()
    assert whole.compute()["num_images"] == 0 and math.isnan(whole.compute()["mPQ"])


def test_memory_is_a_few_floats_per_image():
    metric = PanNukeInstanceMetrics()
    truth = np.zeros((64, 64, 6))
    truth[2:9, 2:9, 0] = 1
    for _ in range(50):
        metric.update_release(truth, truth)
    assert sum(row.nbytes for row in metric._rows) == 50 * 18 * 8


def test_evaluate_module_loads_offline_and_agrees():
    import evaluate

    import pannuke_hf.metrics as metrics

    rng = np.random.default_rng(7)
    truths = [random_release(rng, size=16, nuclei=4) for _ in range(3)]
    preds = [perturb(rng, t) for t in truths]
    tissues = ["Breast", "Colon", "Breast"]
    module = evaluate.load(metrics.PANOPTIC_QUALITY_PATH)
    result = module.compute(predictions=preds, references=truths, tissues=tissues)
    expected = ref_set(list(zip(truths, preds)), tissues)
    for key in ("mPQ", "bPQ", "PQ_neoplastic", "F1_detection"):
        np.testing.assert_allclose(result[key], expected[key], atol=1e-12, err_msg=key)
    assert type(module).__name__ == "PanopticQuality"


def test_trainer_glue_accumulates_batches_and_resets():
    from pannuke_hf.metrics.pq import make_instance_compute_metrics

    truth = square(box=(0, 0, 8, 8), value=1)

    def to_instances(predictions, labels):
        for pred_map, true_map in zip(predictions, labels):
            yield true_map, {1: 1}, pred_map, {1: 1}, "Breast"

    compute_metrics = make_instance_compute_metrics(to_instances, prefix="nuclei_")
    assert compute_metrics(([truth], [truth]), compute_result=False) == {}
    out = compute_metrics(([np.zeros_like(truth)], [truth]), compute_result=True)
    assert out["nuclei_bPQ"] == pytest.approx(0.5 / (1 + EPS))
    assert out["nuclei_num_images"] == 2
    assert "nuclei_per_tissue" not in out
    assert compute_metrics.metric.num_images == 0


def test_huge_ids_and_many_nuclei_take_the_sparse_paths_with_the_same_result():
    rng = np.random.default_rng(8)
    # Ids around 2**40 (beyond any lookup table) and 900 nuclei of 2 px (a sparse joint table).
    true = np.zeros((60, 60), dtype=np.int64)
    true[:, 0::2] = np.arange(1, 60 * 30 + 1).reshape(60, 30)
    true[:, 1::2] = true[:, 0::2]
    true[1::2] = 0  # 900 nuclei of 2 px, on every other row
    pred = np.roll(true, 1, axis=1)  # IoU 1/3: no match ...
    pred[::4] = true[::4]  # ... except on every other nucleus row (450 exact matches)
    expected = ref_pq(true, pred)
    spread = rng.permutation(2**40 + np.arange(2000))
    big_t = np.where(true > 0, spread[true], 0)
    big_p = np.where(pred > 0, spread[pred], 0)
    for t, p in ((true, pred), (big_t, big_p)):
        result = panoptic_quality(t, p)
        assert (result["TP"], result["FN"]) == (450, 450)
        np.testing.assert_allclose(result["PQ"], expected[0], atol=1e-12)
    classes_t = {int(k): 1 + int(k) % 5 for k in np.unique(big_t) if k}
    classes_p = {int(k): 1 + int(k) % 5 for k in np.unique(big_p) if k}
    image = PanNukeInstanceMetrics().update(big_t, classes_t, big_p, classes_p)
    np.testing.assert_allclose(image["bPQ"], expected[0], atol=1e-12)
