"""The mean-IoU metric against an independent, pixel-by-pixel computation written here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pannuke_hf.metrics import MEAN_IOU_PATH, MeanIoU, SegmentationConfusionMatrix, mean_iou

HUB_KEYS = ["mean_iou", "mean_accuracy", "overall_accuracy", "per_category_iou", "per_category_accuracy"]
ALL_KEYS = HUB_KEYS + ["mean_dice", "per_category_dice"]


# ------------------------------------------------------------------------------------------------
# The independent computation: plain Python over every pixel, straight from the definitions.
# ------------------------------------------------------------------------------------------------


def reference_metrics(
    predictions, references, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False
):
    inter = [0] * num_labels
    pred_area = [0] * num_labels
    label_area = [0] * num_labels
    for prediction, reference in zip(predictions, references):
        for p, r in zip(np.asarray(prediction).ravel().tolist(), np.asarray(reference).ravel().tolist()):
            for old, new in (label_map or {}).items():  # one after the other, in order
                if r == old:
                    r = new
            if reduce_labels:
                r = 255 if r == 0 else r
                r = r - 1
                r = 255 if r == 254 else r
            if ignore_index is not None and r == ignore_index:
                continue
            if 0 <= p < num_labels:
                pred_area[p] += 1
            if 0 <= r < num_labels:
                label_area[r] += 1
                if p == r:
                    inter[r] += 1

    def ratio(a, b):
        return a / b if b else math.nan

    def nanmean(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan

    union = [pred_area[c] + label_area[c] - inter[c] for c in range(num_labels)]
    iou = [ratio(inter[c], union[c]) for c in range(num_labels)]
    acc = [ratio(inter[c], label_area[c]) for c in range(num_labels)]
    dice = [ratio(2 * inter[c], pred_area[c] + label_area[c]) for c in range(num_labels)]
    out = {
        "mean_iou": nanmean(iou),
        "mean_accuracy": nanmean(acc),
        "overall_accuracy": ratio(sum(inter), sum(label_area)),
        "per_category_iou": iou,
        "per_category_accuracy": acc,
        "mean_dice": nanmean(dice),
        "per_category_dice": dice,
    }
    if nan_to_num is not None:
        out = {
            k: [nan_to_num if math.isnan(x) else x for x in v]
            if isinstance(v, list)
            else (nan_to_num if math.isnan(v) else v)
            for k, v in out.items()
        }
    return out


def assert_same(actual, expected, keys=ALL_KEYS):
    assert list(actual)[: len(keys)] == keys
    for key in keys:
        np.testing.assert_allclose(
            np.asarray(actual[key], dtype=float),
            np.asarray(expected[key], dtype=float),
            rtol=1e-12,
            atol=0,
            equal_nan=True,
            err_msg=key,
        )


def random_maps(rng, count, shape, low, high, dtype=np.int64):
    return [rng.integers(low, high, size=shape).astype(dtype) for _ in range(count)]


# ------------------------------------------------------------------------------------------------
# Semantics
# ------------------------------------------------------------------------------------------------


def test_hub_documented_example():
    """The example of the Hub metric's card, with its published outputs."""
    predictions = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    references = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    out = mean_iou(predictions, references, num_labels=10, ignore_index=255, reduce_labels=False)
    assert out["mean_iou"] == pytest.approx(0.47750000000000004, abs=1e-15)
    assert out["mean_accuracy"] == pytest.approx(0.5916666666666666, abs=1e-15)
    assert out["overall_accuracy"] == pytest.approx(0.5263157894736842, abs=1e-15)
    np.testing.assert_allclose(out["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(out["per_category_accuracy"], [0, 0, 0.75, 2 / 3, 1, 0, 0.5, 1, 1, 1])


@pytest.mark.parametrize("ignore_index", [255, 0, -100, None])
@pytest.mark.parametrize("fast_path", [True, False])
def test_random_maps_with_out_of_range_values(ignore_index, fast_path):
    rng = np.random.default_rng(1)
    n = 5
    # Values below 0, above n - 1, equal to 255 / -100 / 0, in both predictions and references.
    predictions = random_maps(rng, 4, (9, 11), -3, n + 3) + [np.full((3, 4), 255), np.full((2, 2), -100)]
    references = random_maps(rng, 4, (9, 11), -3, n + 3) + [
        rng.choice([255, -100, 1, 7], (3, 4)),
        np.array([[0, -100], [255, 3]]),
    ]
    references[0][:2] = 255
    references[1][:, :3] = -100
    acc = SegmentationConfusionMatrix(n, ignore_index, fast_path=fast_path)
    acc.update(predictions, references)
    assert acc.num_maps == 6
    assert_same(acc.compute(), reference_metrics(predictions, references, n, ignore_index))


def test_absent_classes_and_one_sided_classes():
    # class 0: both; 1: only in the prediction; 2: only in the reference; 3: nowhere.
    prediction = np.array([[0, 0, 1, 1], [0, 1, 0, 0]])
    reference = np.array([[0, 0, 2, 2], [0, 2, 255, 255]])
    out = mean_iou([prediction], [reference], num_labels=4, ignore_index=255)
    assert_same(out, reference_metrics([prediction], [reference], 4, 255))
    iou, acc, dice = out["per_category_iou"], out["per_category_accuracy"], out["per_category_dice"]
    assert (
        iou[0] == 1.0 and acc[0] == 1.0 and dice[0] == 1.0
    )  # the 2 pixels predicted 0 under 255 are ignored
    assert iou[1] == 0.0 and math.isnan(acc[1]) and dice[1] == 0.0
    assert iou[2] == 0.0 and acc[2] == 0.0 and dice[2] == 0.0
    assert math.isnan(iou[3]) and math.isnan(acc[3]) and math.isnan(dice[3])
    assert out["mean_iou"] == pytest.approx(1 / 3)  # NaN class skipped
    assert out["mean_accuracy"] == pytest.approx(1 / 2)
    assert out["overall_accuracy"] == pytest.approx(3 / 6)  # 6 labelled pixels, 3 right


def test_out_of_range_prediction_still_counts_the_reference_and_vice_versa():
    # Prediction 9 (out of range) over a labelled pixel: the label area counts, the prediction does not.
    # Reference 7 (out of range, not ignored) under a prediction 1: the prediction area counts.
    prediction = np.array([[9, 1]])
    reference = np.array([[1, 7]])
    out = SegmentationConfusionMatrix(3, 255)
    out.update(prediction, reference)
    areas = out.areas()
    np.testing.assert_array_equal(areas["area_label"], [0, 1, 0])
    np.testing.assert_array_equal(areas["area_pred_label"], [0, 1, 0])
    np.testing.assert_array_equal(areas["area_intersect"], [0, 0, 0])
    np.testing.assert_array_equal(areas["area_union"], [0, 2, 0])
    np.testing.assert_array_equal(out.confusion_matrix(), np.zeros((3, 3)))


def test_nothing_labelled_gives_nan_and_nan_to_num_replaces_every_nan():
    prediction = np.array([[0, 1], [2, 2]])
    reference = np.full((2, 2), 255)
    out = mean_iou([prediction], [reference], 3, 255)
    assert all(np.isnan(out[key]).all() for key in ALL_KEYS)
    replaced = mean_iou([prediction], [reference], 3, 255, nan_to_num=-1)
    for key in ALL_KEYS:
        assert (np.asarray(replaced[key]) == -1).all(), key
    rng = np.random.default_rng(2)
    predictions, references = random_maps(rng, 3, (6, 6), 0, 3), random_maps(rng, 3, (6, 6), 0, 3)
    assert_same(
        mean_iou(predictions, references, 6, 255, nan_to_num=0),
        reference_metrics(predictions, references, 6, 255, nan_to_num=0),
    )


def test_label_map_is_applied_in_order_to_references_only():
    prediction = np.array([[1, 2, 3, 3]])
    reference = np.array([[1, 2, 3, 5]])
    # {1: 2, 2: 3} sends reference 1 to 3 (then 2 to 3); predictions are not remapped.
    out = mean_iou([prediction], [reference], 4, 255, label_map={1: 2, 2: 3})
    np.testing.assert_allclose(out["per_category_iou"], [np.nan, 0, 0, 1 / 4], equal_nan=True)
    rng = np.random.default_rng(3)
    predictions, references = random_maps(rng, 3, (7, 5), -1, 8), random_maps(rng, 3, (7, 5), -1, 8)
    for label_map in ({0: 255, 3: 1}, {1: 0, 0: 1}, {7: 2, 2: -1, -1: 255}):
        assert_same(
            mean_iou(predictions, references, 6, 255, label_map=label_map),
            reference_metrics(predictions, references, 6, 255, label_map=label_map),
        )


def test_reduce_labels():
    reference = np.array([[0, 1, 2], [255, 254, 3]])  # -> [[255, 0, 1], [255, 253, 2]]
    prediction = np.array([[0, 1, 1], [0, 5, 2]])
    out = mean_iou([prediction], [reference], 4, 255, reduce_labels=True)
    np.testing.assert_allclose(out["per_category_iou"], [0.0, 0.5, 1.0, np.nan], equal_nan=True)
    rng = np.random.default_rng(4)
    predictions, references = (
        random_maps(rng, 3, (8, 8), 0, 6, np.uint8),
        random_maps(rng, 3, (8, 8), 0, 7, np.uint8),
    )
    references[0][0] = 255
    for ignore_index in (255, 0):
        kwargs = dict(reduce_labels=True, label_map={2: 0})
        assert_same(
            mean_iou(predictions, references, 5, ignore_index, **kwargs),
            reference_metrics(predictions, references, 5, ignore_index, **kwargs),
        )


def test_inputs_are_not_modified():
    reference = torch.tensor([[0, 1, 2, 255]])
    before = reference.clone()
    acc = SegmentationConfusionMatrix(3, 255, label_map={1: 2}, reduce_labels=True)
    acc.update(torch.tensor([[0, 1, 2, 1]]), reference)
    acc_general = SegmentationConfusionMatrix(3, 255, fast_path=False)
    acc_general.update(torch.tensor([[0, 1, 2, 1]]), reference)
    assert torch.equal(reference, before)


# ------------------------------------------------------------------------------------------------
# Streaming: batches, layouts, dtypes
# ------------------------------------------------------------------------------------------------


def test_many_small_batches_equal_one_big_batch_and_one_shot():
    rng = np.random.default_rng(5)
    predictions = rng.integers(0, 7, size=(12, 16, 16))
    references = rng.integers(0, 7, size=(12, 16, 16))
    references[references == 6] = 255
    one_shot = mean_iou(list(predictions), list(references), 6, 255)
    big = SegmentationConfusionMatrix(6, 255)
    big.update(torch.from_numpy(predictions), torch.from_numpy(references))
    small = SegmentationConfusionMatrix(6, 255)
    for start in range(0, 12, 5):  # uneven batches, and one (H, W) map at the end
        small.update(predictions[start : start + 5], references[start : start + 5])
    single = SegmentationConfusionMatrix(6, 255)
    for p, r in zip(predictions, references):
        single.update(p, r)
    expected = reference_metrics(predictions, references, 6, 255)
    for acc in (big, small, single):
        assert acc.num_maps == 12
        assert_same(acc.compute(), expected)
    assert_same(one_shot, expected)
    merged = SegmentationConfusionMatrix(6, 255)
    half = SegmentationConfusionMatrix(6, 255)
    merged.update(predictions[:6], references[:6])
    half.update(predictions[6:], references[6:])
    assert_same(merged.merge(half).compute(), expected)


def test_reset_starts_over():
    acc = SegmentationConfusionMatrix(3, 255)
    acc.update(np.zeros((4, 4), int), np.ones((4, 4), int))
    acc.reset()
    prediction, reference = np.array([[0, 1], [2, 2]]), np.array([[0, 1], [2, 1]])
    acc.update(prediction, reference)
    assert acc.num_maps == 1
    assert_same(acc.compute(), reference_metrics([prediction], [reference], 3, 255))


@pytest.mark.parametrize(
    "dtype",
    [
        np.uint8,
        np.int8,
        np.int16,
        np.uint16,
        np.int32,
        np.uint32,
        np.int64,
        np.float32,
        np.float64,
        "torch.uint8",
        "torch.int64",
        "torch.int32",
    ],
)
def test_dtypes(dtype):
    rng = np.random.default_rng(6)
    predictions = rng.integers(0, 6, size=(3, 10, 10))
    references = rng.integers(0, 7, size=(3, 10, 10))
    references[:, 0] = 127  # out of range for 6 classes, fits every dtype
    expected = reference_metrics(predictions, references, 6, 127)
    if isinstance(dtype, str):
        torch_dtype = getattr(torch, dtype.split(".")[1])
        p, r = torch.from_numpy(predictions).to(torch_dtype), torch.from_numpy(references).to(torch_dtype)
    else:
        p, r = predictions.astype(dtype), references.astype(dtype)
    for fast_path in (True, False):
        acc = SegmentationConfusionMatrix(6, 127, fast_path=fast_path)
        acc.update(p, r)
        assert_same(acc.compute(), expected)


@pytest.mark.parametrize("num_labels", [1, 3, 6, 14, 15, 40])
@pytest.mark.parametrize("ignore_index", [255, None, -100, 3, 200, 0])
def test_uint8_maps_every_fast_path(num_labels, ignore_index):
    """8-bit inputs take 8-bit or 16-bit shortcuts depending on num_labels and ignore_index."""
    rng = np.random.default_rng(11)
    predictions = rng.choice([0, 1, 2, 5, 13, 14, 39, 200, 254, 255], size=(3, 7, 9)).astype(np.uint8)
    references = rng.choice([0, 1, 2, 3, 5, 13, 14, 39, 200, 254, 255], size=(3, 7, 9)).astype(np.uint8)
    expected = reference_metrics(predictions, references, num_labels, ignore_index)
    for fast_path in (True, False):
        acc = SegmentationConfusionMatrix(num_labels, ignore_index, fast_path=fast_path)
        acc.update(torch.from_numpy(predictions), torch.from_numpy(references))
        assert_same(acc.compute(), expected)


def test_bool_maps_and_large_values():
    rng = np.random.default_rng(7)
    prediction = rng.integers(0, 2, size=(6, 6)).astype(bool)
    reference = rng.integers(0, 2, size=(6, 6)).astype(bool)
    assert_same(
        mean_iou([prediction], [reference], 2, 255),
        reference_metrics([prediction.astype(int)], [reference.astype(int)], 2, 255),
    )
    # Values far outside int16 and an ignore index the uint8 fast path cannot see.
    prediction = rng.integers(-(2**40), 2**40, size=(5, 5))
    prediction[:2] = 1
    reference = rng.choice([1, 2, 70000, -70000, 1000], size=(5, 5))
    assert_same(
        mean_iou([prediction], [reference], 3, 1000), reference_metrics([prediction], [reference], 3, 1000)
    )


def test_state_stays_on_the_predictions_device_and_keeps_its_size():
    acc = SegmentationConfusionMatrix(6, 255)
    assert acc.device is None
    rng = np.random.default_rng(8)
    for _ in range(3):
        acc.update(
            torch.from_numpy(rng.integers(0, 6, (2, 8, 8))), torch.from_numpy(rng.integers(0, 6, (2, 8, 8)))
        )
    assert acc.device == torch.device("cpu")
    assert acc.counts.device == torch.device("cpu")
    assert acc.counts.shape == (8, 8)
    assert int(acc.counts.sum()) == 3 * 2 * 8 * 8


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    acc = SegmentationConfusionMatrix(3, 255)
    acc.update(np.zeros((2, 2), int), np.zeros((2, 2), int))  # one map already counted
    with pytest.raises(
        ValueError, match=r"map 2: prediction shape \(2, 3\) differs from reference shape \(2, 2\)"
    ):
        acc.update(
            [np.zeros((2, 2), int), np.zeros((2, 3), int)], [np.zeros((2, 2), int), np.zeros((2, 2), int)]
        )
    with pytest.raises(ValueError, match=r"prediction 1: .*not whole finite"):
        acc.update(np.array([[0.5, 1.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"reference 1: .*nan"):
        acc.update(np.array([[0, 1]]), np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"expected \(H, W\) or \(B, H, W\)"):
        acc.update(np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 2, 2), int))
    with pytest.raises(TypeError, match="prediction 1: expected an integer map"):
        acc.update(np.array([["a", "b"]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        acc.update([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="num_labels"):
        SegmentationConfusionMatrix(0, 255)
    with pytest.raises(TypeError, match="label_map must map int -> int"):
        SegmentationConfusionMatrix(3, 255, label_map={"1": 2})
    assert acc.num_maps == 1  # failed updates did not count


# ------------------------------------------------------------------------------------------------
# The evaluate metric
# ------------------------------------------------------------------------------------------------


def test_evaluate_metric_equals_streaming_path_key_by_key():
    rng = np.random.default_rng(9)
    predictions = random_maps(rng, 3, (8, 9), -1, 7) + [rng.integers(0, 6, (4, 5))]
    references = random_maps(rng, 3, (8, 9), -1, 7) + [rng.integers(0, 6, (4, 5))]
    references[0][0] = 255
    metric = MeanIoU()
    for kwargs in (dict(), dict(nan_to_num=0.0), dict(label_map={1: 4}), dict(reduce_labels=True)):
        out = metric.compute(
            predictions=predictions, references=references, num_labels=6, ignore_index=255, **kwargs
        )
        assert list(out) == ALL_KEYS
        acc = SegmentationConfusionMatrix(6, 255, kwargs.get("label_map"), kwargs.get("reduce_labels", False))
        acc.update(predictions, references)
        assert_same(out, acc.compute(kwargs.get("nan_to_num")))
        assert_same(out, reference_metrics(predictions, references, 6, 255, **kwargs))
    for p, r in zip(predictions[:2], references[:2]):
        metric.add(predictions=p, references=r)
    metric.add_batch(predictions=predictions[2:], references=references[2:])
    assert_same(
        metric.compute(num_labels=6, ignore_index=255), reference_metrics(predictions, references, 6, 255)
    )
    with pytest.raises(ValueError, match="num_labels"):
        metric.compute(predictions=predictions, references=references, ignore_index=255)


def test_evaluate_load_by_path_offline(monkeypatch):
    import evaluate

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(10)
    predictions, references = random_maps(rng, 2, (6, 7), -1, 5), random_maps(rng, 2, (6, 7), 0, 6)
    expected = reference_metrics(predictions, references, 4, 255)
    for path in (MEAN_IOU_PATH, os.path.join(MEAN_IOU_PATH, "mean_iou.py")):
        metric = evaluate.load(path)
        assert type(metric).__name__ == "MeanIoU"
        assert_same(
            metric.compute(predictions=predictions, references=references, num_labels=4, ignore_index=255),
            expected,
        )


@pytest.mark.slow  # a fresh interpreter importing evaluate: ~15 s of CPU, much more on a busy machine
def test_evaluate_load_by_path_offline_in_a_fresh_process(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, numpy as np, evaluate
        predictions = [np.array([[0, 1, 2], [2, 9, 1]]), np.array([[1, 1], [0, -1]])]
        references = [np.array([[0, 1, 1], [255, 2, 1]]), np.array([[1, 7], [0, 0]])]
        out = {{}}
        for name, path in (("folder", {MEAN_IOU_PATH!r}), ("file", {MEAN_IOU_PATH + "/mean_iou.py"!r})):
            metric = evaluate.load(path)
            res = metric.compute(predictions=predictions, references=references, num_labels=3, ignore_index=255)
            out[name] = {{k: np.asarray(v).tolist() for k, v in res.items()}}
        print(json.dumps(out))
        """
    )
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    # Run outside the repository so that a bare folder name cannot be resolved from the cwd.
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    predictions = [np.array([[0, 1, 2], [2, 9, 1]]), np.array([[1, 1], [0, -1]])]
    references = [np.array([[0, 1, 1], [255, 2, 1]]), np.array([[1, 7], [0, 0]])]
    expected = reference_metrics(predictions, references, 3, 255)
    for name in ("folder", "file"):
        assert_same(out[name], expected)


def test_evaluate_route_keeps_every_map_exactly():
    """The evaluate metric stores each map as it is (dtype, shape, values): maps of several
    dtypes and sizes, ids far outside uint16 / int32, bool maps and torch tensors, fed through
    add / add_batch / compute, give the per-pixel definition's numbers."""
    from pannuke_hf.metrics.mean_iou.mean_iou import decode_map, encode_map

    rng = np.random.default_rng(12)
    big = rng.integers(-(2**40), 2**40, size=(5, 6))
    big[:2] = 2
    samples = [
        rng.integers(0, 4, (7, 8)).astype(np.uint8),
        rng.integers(0, 2, (3, 3)).astype(bool),
        rng.integers(-5, 70_000, (4, 9)).astype(np.int32),
        rng.integers(0, 65_535, (6, 2)).astype(np.uint16),
        big,
        np.array([[1.0, 2.0], [3.0, 255.0]], dtype=np.float32),
    ]
    for sample in samples:
        back = decode_map(encode_map(sample))
        assert back.dtype == sample.dtype and back.shape == sample.shape
        np.testing.assert_array_equal(back, sample)
    assert decode_map(encode_map([[1, 2], [3, 4]])).tolist() == [[1, 2], [3, 4]]

    predictions = [samples[0], samples[2], big, torch.from_numpy(samples[0].astype(np.int64))]
    references = [
        rng.choice([0, 1, 2, 3, 255], (7, 8)).astype(np.uint8),
        rng.choice([0, 2, 70_000, -1, 255], (4, 9)),
        rng.choice([1, 2, 2**35, 255], (5, 6)),
        torch.from_numpy(rng.choice([0, 1, 3, 255], (7, 8))),
    ]
    as_numpy = [np.asarray(x) for x in predictions], [np.asarray(x) for x in references]
    expected = reference_metrics(*as_numpy, 4, 255)
    metric = MeanIoU()
    assert_same(
        metric.compute(predictions=predictions, references=references, num_labels=4, ignore_index=255),
        expected,
    )
    metric.add(prediction=predictions[0], reference=references[0])
    metric.add_batch(predictions=predictions[1:], references=references[1:])
    assert_same(metric.compute(num_labels=4, ignore_index=255), expected)


def test_evaluate_route_names_bad_maps():
    metric = MeanIoU()
    good = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(
        ValueError, match=r"predictions 1: expected a \(height, width\) map, got shape \(1, 2, 3\)"
    ):
        metric.add_batch(predictions=[good, good[None]], references=[good, good])
    with pytest.raises(TypeError, match="references 0: expected a map of integer ids, got dtype <U1"):
        metric.add_batch(predictions=[good], references=[np.array([["a"]])])
    with pytest.raises(TypeError, match="predictions 0 is not a rectangular map"):
        metric.add_batch(predictions=[[[1, 2], [3]]], references=[good])
    fractional = good.astype(float)
    fractional[0, 1] = 2.5
    with pytest.raises(ValueError, match="prediction 1: expected integer class ids"):
        metric.compute(
            predictions=[good, fractional], references=[good, good], num_labels=3, ignore_index=255
        )
