"""The class-statistics table against counts computed independently on the raw masks."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

import pannuke_hf  # noqa: F401  (registers the builder)
from pannuke_hf.commands import stats as stats_cmd
from pannuke_hf.constants import CLASS_FULL_NAMES, FOLDS, patch_id, raw_relpaths
from pannuke_hf.data.splits import reference_split_ids
from pannuke_hf.data.stats import class_statistics, statistics_table


def _raw_counts(raw_root, patches: list[tuple[int, int]], void_ignored: bool = False):
    """(images_with (6,), pixels (6,), ignored pixels) straight from masks.npy.

    Label of class channel j is (j + 1) % 6 and a later channel wins: a pixel counts for channel
    j when channel j is set and no later class channel is. Pixels with no class are background,
    or ignored when they are void (background channel 0) and ``void_ignored``.
    """
    images_with = np.zeros(6, dtype=np.int64)
    pixels = np.zeros(6, dtype=np.int64)
    ignored = 0
    for fold, index in patches:
        masks = np.load(raw_root / raw_relpaths(fold)["masks"], mmap_mode="r")[index]
        classes = masks[..., :5] > 0
        later = np.zeros(classes.shape[:2], dtype=bool)
        per_label = np.zeros(6, dtype=np.int64)
        for channel in range(4, -1, -1):
            per_label[(channel + 1) % 6] = int((classes[..., channel] & ~later).sum())
            later |= classes[..., channel]
        no_class = ~classes.any(axis=-1)
        void = no_class & (masks[..., 5] == 0)
        if void_ignored:
            ignored += int(void.sum())
            per_label[0] = int((no_class & ~void).sum())
        else:
            per_label[0] = int(no_class.sum())
        pixels += per_label
        images_with += per_label > 0
    return images_with, pixels, ignored


def _all_patches(raw_fold_sizes, fold):
    return [(fold, i) for i in range(raw_fold_sizes[fold])]


@pytest.fixture(scope="module")
def built(raw_root, tmp_path_factory):
    """The builder's fold1/fold2/fold3 of the generated raw data (built once for this module)."""
    cache = tmp_path_factory.mktemp("stats_cache")
    return datasets.load_dataset("pannuke_hf", data_dir=str(raw_root), cache_dir=str(cache))


@pytest.mark.parametrize("fold", FOLDS)
def test_fold_statistics_match_raw_masks(built, raw_root, raw_fold_sizes, fold):
    stats = class_statistics(built[f"fold{fold}"])
    images_with, pixels, _ = _raw_counts(raw_root, _all_patches(raw_fold_sizes, fold))
    assert stats.num_images == raw_fold_sizes[fold]
    assert stats.images_with.tolist() == images_with.tolist()
    assert stats.pixels.tolist() == pixels.tolist()
    assert stats.ignored_pixels == 0
    assert np.isclose(stats.percent.sum(), 100.0)
    assert np.allclose(stats.percent, 100.0 * pixels / pixels.sum())


def test_streaming_gives_the_same_counts(built):
    stats = class_statistics(built["fold2"])
    streamed = class_statistics(built["fold2"].to_iterable_dataset())
    assert streamed.pixels.tolist() == stats.pixels.tolist()
    assert streamed.images_with.tolist() == stats.images_with.tolist()


def _parse_table(table: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in table.splitlines()]
    return {cells[1].strip(): [c.strip() for c in cells] for cells in rows[2:]}


def test_cli_reference_validation_split(raw_root, raw_fold_sizes, tmp_path, capsys):
    output = tmp_path / "stats.md"
    code = stats_cmd.main(
        [
            "--data-dir",
            str(raw_root),
            "--scheme",
            "reference",
            "--split",
            "validation",
            "--output",
            str(output),
        ]
    )
    table = capsys.readouterr().out.strip()
    assert code == 0 and output.read_text().strip() == table
    ids = {patch_id(f, i): (f, i) for f in FOLDS for i in range(raw_fold_sizes[f])}
    _, validation = reference_split_ids(ids)
    images_with, pixels, _ = _raw_counts(raw_root, [ids[i] for i in validation])
    rows = _parse_table(table)
    assert table.splitlines()[0].split("|")[3].strip() == "Num. validation"
    for label, name in enumerate(CLASS_FULL_NAMES):
        assert rows[name][0] == str(label)
        assert int(rows[name][2]) == images_with[label]
        assert float(rows[name][3]) == pytest.approx(100.0 * pixels[label] / pixels.sum(), abs=0.006)
    assert int(rows["all images"][2]) == len(validation)


def test_cli_void_ignored(raw_root, raw_fold_sizes, capsys):
    code = stats_cmd.main(["--data-dir", str(raw_root), "--split", "fold3", "--void-label", "255"])
    rows = _parse_table(capsys.readouterr().out)
    images_with, pixels, ignored = _raw_counts(raw_root, _all_patches(raw_fold_sizes, 3), void_ignored=True)
    assert code == 0
    assert ignored == 256 * 256  # the generated void patch
    assert int(rows["ignored (void)"][2]) == 1
    total = pixels.sum() + ignored
    assert float(rows["ignored (void)"][3]) == pytest.approx(100.0 * ignored / total, abs=0.006)
    assert float(rows["background"][3]) == pytest.approx(100.0 * pixels[0] / total, abs=0.006)


def test_cli_unknown_split(raw_root, capsys):
    assert stats_cmd.main(["--data-dir", str(raw_root), "--split", "test"]) == 2
    assert "--split test: the splits without --scheme are fold1, fold2, fold3" in capsys.readouterr().err


def _label_dataset(maps: list[np.ndarray]) -> datasets.Dataset:
    features = datasets.Features({"id": datasets.Value("string"), "semantic_mask": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"id": [f"fold1_{i:04d}" for i in range(len(maps))], "semantic_mask": maps}, features=features
    )


def test_table_layout_and_names():
    a = np.zeros((4, 4), dtype=np.uint8)
    a[0, :2] = 4  # label 4: dead
    b = np.full((4, 4), 255, dtype=np.uint8)
    b[3, 3] = 1
    stats = class_statistics(_label_dataset([a, b]))
    assert stats.images_with.tolist() == [1, 1, 0, 0, 1, 0]
    assert stats.pixels.tolist() == [14, 1, 0, 0, 2, 0] and stats.ignored_pixels == 15
    table = statistics_table({"x": stats, "y": class_statistics(_label_dataset([a]))})
    lines = table.splitlines()
    assert lines[0] == "| Label | Class Name | Num. x | Pct. x (%) | Num. y | Pct. y (%) |"
    assert lines[2] == "| 0 | background | 1 | 43.75 | 1 | 87.50 |"
    assert lines[6] == "| 4 | dead | 1 | 6.25 | 1 | 12.50 |"
    assert lines[8] == "| 255 | ignored (void) | 1 | 46.88 | 0 | 0.00 |"


def test_unknown_label_names_the_row():
    bad = np.zeros((4, 4), dtype=np.uint8)
    bad[1, 1] = 7
    with pytest.raises(ValueError, match=r"fold1_0001: semantic_mask holds unknown labels \[7\]"):
        class_statistics(_label_dataset([np.zeros((4, 4), dtype=np.uint8), bad]))
