"""pannuke_hf.nuclei: release form <-> instance form, numbered as the dataset's instance_mask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pannuke_hf.data.synthetic import QUIRK_PATCHES, make_synthetic_patch
from pannuke_hf.nuclei import (
    NucleiInputError,
    classes_from_semantic,
    instances_to_release,
    release_to_instances,
)


def test_hand_made_numbering_by_channel_then_raw_id_later_channels_win():
    release = np.zeros((4, 6, 6))
    release[0, 0:2, 2] = 900  # connective, raw id 900
    release[0, 2:4, 0] = 700  # neoplastic 700
    release[1, 0:3, 0] = 5  # neoplastic 5
    release[1, 2, 4] = 300  # epithelial 300 overwrites neoplastic 5 at (1, 2)
    release[3, 5, 0] = 2.0**20  # a large id
    instance, classes = release_to_instances(release)
    # Order: neoplastic 5, 700, 2**20 -> 1, 2, 3; connective 900 -> 4; epithelial 300 -> 5.
    expected = np.zeros((4, 6), dtype=np.int32)
    expected[0, 0:2] = 4
    expected[0, 2:4] = 2
    expected[1, 0:2] = 1
    expected[1, 2] = 5
    expected[3, 5] = 3
    np.testing.assert_array_equal(instance, expected)
    assert instance.dtype == np.int32
    assert classes == {1: 1, 2: 1, 3: 1, 4: 3, 5: 5}


@pytest.mark.parametrize("index", sorted(QUIRK_PATCHES) + [7])
def test_numbering_equals_the_datasets_instance_mask(index):
    from pannuke_hf.data.raw import convert_mask

    _, masks, _ = make_synthetic_patch(seed=3, fold=2, index=index)
    _, instance, labels, _ = convert_mask(masks, Path("masks.npy"), index)
    ours, classes = release_to_instances(masks)
    np.testing.assert_array_equal(ours, instance)
    assert list(classes) == list(range(1, len(labels) + 1))
    assert list(classes.values()) == labels


def test_round_trip_instances_to_release_and_back():
    _, masks, _ = make_synthetic_patch(seed=1, fold=1, index=0)
    instance, classes = release_to_instances(masks)
    release = instances_to_release(instance, classes)
    assert release.shape == masks.shape and release.dtype == np.int32
    np.testing.assert_array_equal(release[..., 5], (instance == 0).astype(np.int32))
    again, classes_again = release_to_instances(release)
    np.testing.assert_array_equal(again, instance)  # ids 1..K stay in (class, id) order
    assert classes_again == classes
    # The dataset's instance_labels (a sequence) works as the classes too.
    np.testing.assert_array_equal(instances_to_release(instance, list(classes.values())), release)


def test_instances_to_release_keeps_ids_and_puts_each_in_its_class_channel():
    instance = np.array([[0, 40000, 40000], [7, 7, 0]])
    release = instances_to_release(instance, {7: 2, 40000: 5, 123: 1})  # 123: absent, ignored
    np.testing.assert_array_equal(release[..., 1], [[0, 0, 0], [7, 7, 0]])
    np.testing.assert_array_equal(release[..., 4], [[0, 40000, 40000], [0, 0, 0]])
    assert not release[..., [0, 2, 3]].any()
    np.testing.assert_array_equal(release[..., 5], [[1, 0, 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "value, message",
    [(np.nan, "NaN"), (-3, "negative"), (2.5, "fractional"), (np.inf, "infinite")],
)
def test_bad_ids_raise_naming_the_image_and_channel(value, message):
    release = np.zeros((4, 4, 6))
    release[1, 1, 3] = value
    with pytest.raises(NucleiInputError, match=rf"image 9: channel 3 \(dead\).*{message}"):
        release_to_instances(release, where="image 9")


def test_bad_shapes_and_classes_raise():
    with pytest.raises(NucleiInputError, match=r"\(H, W, 5\) or \(H, W, 6\)"):
        release_to_instances(np.zeros((4, 4, 3)))
    release_to_instances(np.zeros((4, 4, 5)))  # five channels are fine
    with pytest.raises(NucleiInputError, match="nuclei \\[2\\] .*no class"):
        instances_to_release(np.array([[1, 2]]), {1: 1}, where="image 0")
    with pytest.raises(NucleiInputError, match="class 0 is outside 1..5"):
        instances_to_release(np.array([[1, 2]]), {1: 1, 2: 0})
    with pytest.raises(NucleiInputError, match="2-D"):
        instances_to_release(np.zeros((2, 2, 2)), {})


def test_classes_from_semantic_majority_vote():
    instance = np.array([[1, 1, 1, 2], [0, 3, 3, 2]])
    semantic = np.array([[2, 2, 5, 4], [0, 0, 1, 4]])
    assert classes_from_semantic(instance, semantic) == {1: 2, 2: 4, 3: 1}
    with pytest.raises(NucleiInputError, match="only background"):
        classes_from_semantic(np.array([[1]]), np.array([[0]]))


def test_import_does_not_pull_torch_or_transformers():
    code = (
        "import sys, pannuke_hf\n"
        "before = {m for m in ('torch', 'transformers') if m in sys.modules}\n"
        "import pannuke_hf.nuclei, pannuke_hf.metrics.pq, pannuke_hf.commands.score\n"
        "after = {m for m in ('torch', 'transformers', 'evaluate') if m in sys.modules}\n"
        "print(sorted(before), sorted(after))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "[]":
        pytest.skip(f"`import pannuke_hf` itself imports {out[0]}")
    assert out == ["[]", "[]"]
