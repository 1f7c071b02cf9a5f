"""The PanNuke datasets builder: schema, load_dataset registration, num_proc, streaming,
folders vs zips, stale-cache protection, failed builds, and the ``prepare`` command."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from test_raw import blank_mask, reference_conversion, tiny_fold_arrays, write_fold

import pannuke_hf  # noqa: F401  (registers the builder)
from pannuke_hf.constants import CITATION, CLASS_NAMES, LICENSE, TISSUES, raw_relpaths
from pannuke_hf.data import registration
from pannuke_hf.data.builder import PanNuke
from pannuke_hf.data.raw import PanNukeDataError

SPLITS = ["fold1", "fold2", "fold3"]


def rows(ds) -> list[dict]:
    """Rows with images turned into arrays, for exact comparisons."""
    out = []
    for row in ds:
        row = dict(row)
        for key in ("image", "semantic_mask", "instance_mask"):
            row[key] = np.array(row[key])
        out.append(row)
    return out


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{x['id']} {key}")
            else:
                assert x[key] == y[key], (x["id"], key)


def tiny_release(root, n=2, seed=0):
    images, masks, types = tiny_fold_arrays(n, seed)
    for fold in (1, 2, 3):
        write_fold(root, fold, images, masks, types)
    return images, masks, types


@pytest.fixture(scope="module")
def built(raw_root, tmp_path_factory):
    """The generated release built once with the builder class directly."""
    builder = PanNuke(data_dir=str(raw_root), cache_dir=str(tmp_path_factory.mktemp("cache")))
    builder.download_and_prepare()
    ds = builder.as_dataset()
    return builder, ds, {split: rows(ds[split]) for split in SPLITS}


def test_schema_info_and_rows(built, raw_root, raw_fold_sizes):
    builder, ds, plain = built
    assert list(ds) == SPLITS
    assert {s: ds[s].num_rows for s in SPLITS} == {f"fold{k}": n for k, n in raw_fold_sizes.items()}
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == {
        f"fold{k}": n for k, n in raw_fold_sizes.items()
    }
    f = ds["fold1"].features
    assert f["tissue"].names == list(TISSUES) and f["instance_labels"].feature.names == list(CLASS_NAMES)
    assert f["fold"].dtype == "int8" and f["index"].dtype == "int32"
    assert f["instance_raw_ids"].feature.dtype == "int32"
    assert builder.info.license == LICENSE and builder.info.citation == CITATION and builder.info.description

    types = np.load(raw_root / raw_relpaths(2)["types"])
    masks = np.load(raw_root / raw_relpaths(2)["masks"], mmap_mode="r")
    images = np.load(raw_root / raw_relpaths(2)["images"], mmap_mode="r")
    raw_row = ds["fold2"][3]
    assert raw_row["image"].mode == "RGB" and raw_row["semantic_mask"].mode == "L"
    assert raw_row["image"].size == (256, 256)
    for i, row in enumerate(plain["fold2"]):
        assert row["id"] == f"fold2_{i:04d}" and row["fold"] == 2 and row["index"] == i
        assert TISSUES[row["tissue"]] == types[i]
        np.testing.assert_array_equal(row["image"], images[i].astype(np.uint8))
        assert row["instance_mask"].dtype == np.uint16  # 16-bit PNG, lossless
        semantic, instance, labels, raw_ids = reference_conversion(masks[i])
        np.testing.assert_array_equal(row["semantic_mask"], semantic)
        np.testing.assert_array_equal(row["instance_mask"], instance)
        assert row["instance_labels"] == labels and row["instance_raw_ids"] == raw_ids
        fg = row["instance_mask"] > 0
        assert (row["semantic_mask"][fg] == np.asarray(labels)[row["instance_mask"][fg] - 1]).all()


def test_registration_pins_private_api(raw_root, tmp_path):
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    module_path, code_hash = _PACKAGED_DATASETS_MODULES["pannuke_hf"]
    assert module_path == "pannuke_hf.data.builder" and code_hash == registration.build_code_hash()
    builder = datasets.load_dataset_builder("pannuke_hf", data_dir=str(raw_root))
    assert type(builder) is PanNuke and builder.dataset_name == "pannuke_hf"
    # Other packaged names still take the normal route (data files scanned from data_dir).
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text("a,b\n1,2\n3,4\n")
    table = datasets.load_dataset("csv", data_dir=str(csv_dir), cache_dir=str(tmp_path / "c"), split="train")
    assert table["a"] == [1, 3]
    with pytest.raises(ValueError, match="data_files is not supported"):
        datasets.load_dataset_builder("pannuke_hf", data_files={"train": "x.npy"})


def test_load_dataset_plain_num_proc_streaming_and_zips_agree(built, raw_root, raw_zips, tmp_path):
    _, _, plain = built
    ds = datasets.load_dataset("pannuke_hf", data_dir=str(raw_root), cache_dir=str(tmp_path / "a"))
    for split in SPLITS:
        assert_same_rows(rows(ds[split]), plain[split])
    ds2 = datasets.load_dataset(
        "pannuke_hf", data_dir=str(raw_zips), cache_dir=str(tmp_path / "b"), num_proc=2
    )
    assert len(ds2["fold1"].cache_files) == 2  # really written by two jobs
    for split in SPLITS:
        assert_same_rows(rows(ds2[split]), plain[split])
    stream = datasets.load_dataset("pannuke_hf", data_dir=str(raw_root), streaming=True)
    assert isinstance(stream, datasets.IterableDatasetDict)
    for split in SPLITS:
        assert_same_rows(rows(stream[split]), plain[split])


def test_void_label_config_gives_its_own_build(built, raw_root, tmp_path):
    _, _, plain = built
    cache = str(tmp_path / "cache")
    ds0 = datasets.load_dataset("pannuke_hf", data_dir=str(raw_root), cache_dir=cache, split="fold1")
    ds255 = datasets.load_dataset(
        "pannuke_hf", data_dir=str(raw_root), cache_dir=cache, split="fold1", void_label=255
    )
    assert ds0.cache_files != ds255.cache_files
    masks = np.load(raw_root / raw_relpaths(1)["masks"], mmap_mode="r")
    n_void = 0
    for i, (a, b) in enumerate(zip(ds0, ds255)):
        void = np.asarray(masks[i]).sum(-1) == 0
        n_void += int(void.sum())
        assert (np.array(b["semantic_mask"])[void] == 255).all()
        assert (np.array(a["semantic_mask"])[void] == 0).all()
        np.testing.assert_array_equal(
            np.array(a["semantic_mask"])[~void], np.array(b["semantic_mask"])[~void]
        )
    assert n_void > 0
    with pytest.raises(ValueError, match="void_label"):
        PanNuke(data_dir=str(raw_root), cache_dir=cache, void_label=300)


@pytest.mark.parametrize("value", [3, 1, 254, 300, -1, True, 255.0, "255"])
def test_void_label_other_than_0_or_255_is_refused(value, raw_root, tmp_path):
    # 3 would turn every void pixel into connective tissue, silently
    with pytest.raises(ValueError, match=r"void_label must be 0 .* or 255"):
        datasets.load_dataset(
            "pannuke_hf", data_dir=str(raw_root), cache_dir=str(tmp_path), split="fold1", void_label=value
        )
    assert not any(tmp_path.rglob("*.arrow"))  # refused before anything was built


def test_changed_raw_file_gives_fresh_build(tmp_path):
    raw_dir = tmp_path / "raw"
    images, masks, types = tiny_release(raw_dir)
    cache = str(tmp_path / "cache")
    first = PanNuke(data_dir=str(raw_dir), cache_dir=cache)
    first.download_and_prepare()
    before = np.array(first.as_dataset(split="fold3")[0]["semantic_mask"])
    assert before[15, 15] == 1  # channel 0 nucleus of tiny_fold_arrays

    masks[0, 10:20, 10:20, 0] = 0
    masks[0, 10:20, 10:20, 3] = 999  # now a dead nucleus
    write_fold(raw_dir, 3, images, masks, types)
    second = PanNuke(data_dir=str(raw_dir), cache_dir=cache)
    assert second.cache_dir != first.cache_dir
    second.download_and_prepare()
    row = second.as_dataset(split="fold3")[0]
    assert np.array(row["semantic_mask"])[15, 15] == 4 and 999 in row["instance_raw_ids"]


def test_changed_builder_code_gives_fresh_build(tmp_path, monkeypatch):
    raw_dir = tmp_path / "raw"
    tiny_release(raw_dir, n=1)
    extra = tmp_path / "fake_source.py"
    extra.write_text("x = 1\n")
    monkeypatch.setattr(registration, "BUILD_SOURCES", registration.BUILD_SOURCES + (extra,))
    cache = str(tmp_path / "cache")
    first = PanNuke(data_dir=str(raw_dir), cache_dir=cache)
    first.download_and_prepare()
    assert PanNuke(data_dir=str(raw_dir), cache_dir=cache).cache_dir == first.cache_dir  # reused
    extra.write_text("x = 2\n")  # an edit of the builder code
    second = PanNuke(data_dir=str(raw_dir), cache_dir=cache)
    assert second.cache_dir != first.cache_dir
    assert not datasets.builder.os.path.exists(second.cache_dir)
    second.download_and_prepare()
    assert second.as_dataset(split="fold1").num_rows == 1


@pytest.mark.parametrize("num_proc", [None, 2])
def test_failed_build_leaves_nothing_and_fix_rebuilds(tmp_path, num_proc):
    raw_dir = tmp_path / "raw"
    images, masks, types = tiny_release(raw_dir, n=3)
    bad = masks.copy()
    bad[2, 7, 7, 1] = np.nan
    write_fold(raw_dir, 2, images, bad, types)
    cache = tmp_path / "cache"
    for _ in range(2):  # a second call fails again: nothing was taken for finished
        builder = PanNuke(data_dir=str(raw_dir), cache_dir=str(cache))
        with pytest.raises(PanNukeDataError, match=r"fold2/masks\.npy': patch 2: mask channel 1 holds NaN"):
            builder.download_and_prepare(num_proc=num_proc)
        leftovers = [
            p for p in cache.rglob("*") if p.suffix in (".arrow", ".json") and "downloads" not in p.parts
        ]
        assert leftovers == []
    write_fold(raw_dir, 2, images, masks, types)  # fixed
    builder = PanNuke(data_dir=str(raw_dir), cache_dir=str(cache))
    builder.download_and_prepare(num_proc=num_proc)
    ds = builder.as_dataset()
    assert [ds[s].num_rows for s in SPLITS] == [3, 3, 3]
    assert ds["fold2"][2]["id"] == "fold2_0002"


def test_bad_input_errors_surface_through_load_dataset(tmp_path):
    raw_dir = tmp_path / "raw"
    images, masks, types = tiny_release(raw_dir)
    write_fold(raw_dir, 1, images, masks, np.array(["Breast", "Atlantis"]))
    with pytest.raises(PanNukeDataError, match=r"fold1/types\.npy': patch 1: unknown tissue 'Atlantis'"):
        datasets.load_dataset("pannuke_hf", data_dir=str(raw_dir), cache_dir=str(tmp_path / "c"))
    write_fold(raw_dir, 1, images, masks, types)
    (raw_dir / raw_relpaths(3)["masks"]).unlink()
    with pytest.raises(PanNukeDataError, match=r"fold 3 not found|missing file .*fold3/masks\.npy"):
        datasets.load_dataset("pannuke_hf", data_dir=str(raw_dir), cache_dir=str(tmp_path / "c"))
    bad = images.copy()
    bad[1, 0, 0, 0] = 300.0
    write_fold(raw_dir, 3, bad, masks, types)
    stream = datasets.load_dataset("pannuke_hf", data_dir=str(raw_dir), streaming=True, split="fold3")
    it = iter(stream)
    assert next(it)["id"] == "fold3_0000"
    with pytest.raises(
        PanNukeDataError, match=r"fold3/images\.npy': patch 1: image values must lie in 0-255"
    ):
        next(it)


def test_empty_and_void_patches_build(tmp_path):
    raw_dir = tmp_path / "raw"
    images, masks, types = tiny_fold_arrays(2)
    masks[0] = blank_mask()  # no nucleus
    masks[1] = 0.0  # all void
    for fold in (1, 2, 3):
        write_fold(raw_dir, fold, images, masks, types)
    ds = datasets.load_dataset(
        "pannuke_hf", data_dir=str(raw_dir), cache_dir=str(tmp_path / "c"), split="fold1"
    )
    assert ds[0]["instance_labels"] == [] and not np.array(ds[0]["instance_mask"]).any()
    assert ds[1]["instance_raw_ids"] == [] and not np.array(ds[1]["semantic_mask"]).any()


def test_prepare_command(raw_zips, tmp_path, capsys, raw_fold_sizes):
    from pannuke_hf.commands.prepare import main

    assert main(["--data-dir", str(raw_zips), "--cache-dir", str(tmp_path), "--num-proc", "2"]) == 0
    out = capsys.readouterr().out
    for fold, n in raw_fold_sizes.items():
        assert f"| fold{fold} | {n} |" in out
    assert f"| total | {sum(raw_fold_sizes.values())} |" in out
    # The build is in the cache: the builder now reuses it.
    builder = PanNuke(data_dir=str(raw_zips), cache_dir=str(tmp_path))
    assert datasets.builder.os.path.isdir(builder.cache_dir)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--data-dir", str(empty), "--cache-dir", str(tmp_path)]) == 1
    assert "fold 1 not found" in capsys.readouterr().err
