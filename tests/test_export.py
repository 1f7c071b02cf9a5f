"""`pannuke-hf export`: Parquet shards + dataset card, loadable without project code, pushable."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import datasets
import numpy as np
import pytest
import yaml

from pannuke_hf.constants import CITATION, CLASS_FULL_NAMES, CLASS_NAMES, LICENSE, NUM_RAW_CHANNELS, TISSUES
from pannuke_hf.data.export import build_folds, export_dataset

#: Small enough that fold1 (6 generated patches) spans several shards.
SMALL_SHARD = "300KB"


def _decoded_rows(dataset) -> list[dict]:
    """Every row with its images decoded to arrays (and their PIL modes) for exact comparison."""
    rows = []
    for row in dataset:
        out = {}
        for key, value in row.items():
            if hasattr(value, "mode"):  # PIL image
                out[key] = (value.mode, value.size, np.asarray(value).tobytes())
            else:
                out[key] = value
        rows.append(out)
    return rows


def _card_parts(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    header, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(header), body


@pytest.fixture(scope="module")
def folds(raw_root, tmp_path_factory):
    """The builder's fold1/fold2/fold3 of the generated release."""
    return build_folds(raw_root, cache_dir=str(tmp_path_factory.mktemp("export_build_cache")))


@pytest.fixture(scope="module")
def exported(folds, tmp_path_factory):
    """An export of ``folds`` with small shards."""
    out = tmp_path_factory.mktemp("export") / "pannuke-parquet"
    return export_dataset(folds, out, max_shard_size=SMALL_SHARD)


def test_export_writes_shards_per_split(folds, exported):
    on_disk = sorted(
        p.relative_to(exported.out_dir).as_posix() for p in exported.out_dir.rglob("*") if p.is_file()
    )
    expected = sorted(["README.md"] + [name for names in exported.shards.values() for name in names])
    assert on_disk == expected
    assert set(exported.shards) == {"fold1", "fold2", "fold3"}
    assert len(exported.shards["fold1"]) > 1  # the size limit was applied
    for split, names in exported.shards.items():
        count = len(names)
        assert names == [f"data/{split}-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    assert exported.num_rows == {split: len(ds) for split, ds in folds.items()}


def test_round_trip_same_features_and_rows(folds, exported, tmp_path):
    loaded = datasets.load_dataset(str(exported.out_dir), cache_dir=str(tmp_path / "c"))
    assert set(loaded) == set(folds)
    for split in folds:
        assert loaded[split].features == folds[split].features
        assert loaded[split]["id"] == folds[split]["id"]  # order kept across shards
        before, after = _decoded_rows(folds[split]), _decoded_rows(loaded[split])
        assert after == before
    # streaming reads the shards directly, same typed rows
    streamed = datasets.load_dataset(str(exported.out_dir), split="fold1", streaming=True)
    assert streamed.features == folds["fold1"].features
    assert _decoded_rows(streamed) == _decoded_rows(folds["fold1"])
    # the instance map stays a 16-bit image whose values index the instance lists
    row = loaded["fold1"][0]
    assert row["instance_mask"].mode == "I;16"
    assert 0 < np.asarray(row["instance_mask"]).max() <= len(row["instance_labels"])


_CHILD = r"""
import hashlib, json, sys
sys.modules["pannuke_hf"] = None  # any import of the project now fails
try:
    import pannuke_hf  # noqa: F401
except ImportError:
    blocked = True
else:
    blocked = False
import datasets
import numpy as np

ds = datasets.load_dataset(sys.argv[1], cache_dir=sys.argv[2])
out = {"blocked": blocked, "modules": sorted(m for m in sys.modules if m.startswith("pannuke")), "splits": {}}
for split in ds:
    rows = []
    for row in ds[split]:
        digests = {k: hashlib.sha256(np.asarray(row[k]).tobytes()).hexdigest() + row[k].mode
                   for k in ("image", "semantic_mask", "instance_mask")}
        rows.append([row["id"], row["tissue"], row["instance_labels"], row["instance_raw_ids"], digests])
    out["splits"][split] = {"features": ds[split].features.to_dict(), "rows": rows}
print(json.dumps(out))
"""


def test_loads_without_project_code(folds, exported, tmp_path):
    """A fresh interpreter that cannot import pannuke_hf restores the same features and rows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", _CHILD, str(exported.out_dir), str(tmp_path / "child_cache")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] is True and result["modules"] == ["pannuke_hf"]
    for split, dataset in folds.items():
        got = result["splits"][split]
        assert datasets.Features.from_dict(got["features"]) == dataset.features
        expected = []
        for row in dataset:
            digests = {
                k: hashlib.sha256(np.asarray(row[k]).tobytes()).hexdigest() + row[k].mode
                for k in ("image", "semantic_mask", "instance_mask")
            }
            expected.append(
                [row["id"], row["tissue"], row["instance_labels"], row["instance_raw_ids"], digests]
            )
        assert got["rows"] == expected


def test_card_yaml_and_content(folds, exported):
    meta, body = _card_parts(exported.card.read_text(encoding="utf-8"))
    assert meta["license"] == LICENSE == "cc-by-nc-sa-4.0"
    assert "image-segmentation" in meta["task_categories"]
    # the YAML features restore the exact schema, ClassLabel names included
    features = datasets.Features._from_yaml_list(meta["dataset_info"]["features"])
    assert features == folds["fold1"].features
    assert features["instance_labels"].feature.names == list(CLASS_NAMES)
    assert features["tissue"].names == list(TISSUES)
    splits = {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]}
    assert splits == {split: len(ds) for split, ds in folds.items()}
    data_files = {d["split"]: d["path"] for d in meta["configs"][0]["data_files"]}
    assert data_files == {split: f"data/{split}-*" for split in folds}

    # class table: label value -> full name, and the raw channel that becomes that label
    rows = re.findall(r"^\| (\d) \| `(\w+)` \| ([^|]+) \| (\d) \|$", body, flags=re.M)
    assert [(int(label), name, full.strip()) for label, name, full, _ in rows] == [
        (i, CLASS_NAMES[i], CLASS_FULL_NAMES[i]) for i in range(len(CLASS_NAMES))
    ]
    for label, _, _, channel in rows:  # reference mapping: channel j -> label (j + 1) % 6
        assert (int(channel) + 1) % NUM_RAW_CHANNELS == int(label)
    assert "connective / soft tissue" in body and "non-neoplastic epithelial" in body

    # tissue table: all 19, with the per-fold counts of the data
    for tissue in TISSUES:
        match = re.search(rf"^\| {re.escape(tissue)} \| ([\d |]+)\|$", body, flags=re.M)
        assert match, tissue
        cells = [int(c) for c in match.group(1).split("|")]
        counts = [Counter(ds.features["tissue"].int2str(ds["tissue"]))[tissue] for ds in folds.values()]
        assert cells == counts + [sum(counts)]

    # both citations, verbatim, and the policies
    assert CITATION.strip() in body
    assert "gamper2019pannuke" in body and "gamper2020pannuke" in body
    assert "Void pixels" in body and "later channel wins" in body
    assert "train_test_split(" in body and 'make_splits(ds, "reference")' in body


def test_card_documents_the_void_label(folds, exported):
    from pannuke_hf.data.export import render_dataset_card

    default = exported.card.read_text(encoding="utf-8")
    ignored = render_dataset_card(folds, exported.shards, void_label=255, repo_id="someone/pannuke")
    assert "label 0 (background)" in default and "label 255" not in default
    assert "label 255" in ignored and 'load_dataset("someone/pannuke")' in ignored


def test_export_embeds_image_files(tmp_path, folds):
    """Image columns holding file paths (a user-made Dataset) end up as bytes in the shards."""
    from PIL import Image

    small = folds["fold2"].select(range(2))
    paths = []
    for i, row in enumerate(small):
        path = tmp_path / f"img{i}.png"
        row["image"].save(path)
        paths.append(str(path))
    with_paths = small.cast_column("image", datasets.Image(decode=False)).map(
        lambda row, i: {"image": {"path": paths[i], "bytes": None}}, with_indices=True
    )
    with_paths = with_paths.cast_column("image", datasets.Image())
    assert with_paths.with_format("arrow")["image"][0]["bytes"].as_py() is None

    result = export_dataset(datasets.DatasetDict({"fold2": with_paths}), tmp_path / "out")
    expected = [np.asarray(Image.open(p)).copy() for p in paths]
    for p in paths:
        os.remove(p)
    loaded = datasets.load_dataset(str(result.out_dir), split="fold2", cache_dir=str(tmp_path / "c"))
    for image, array in zip(loaded["image"], expected):
        assert np.array_equal(np.asarray(image), array)


def test_cli_push_to_hub_and_load(hub_server, raw_root, folds, tmp_path, capsys):
    """`pannuke-hf export --push-to-hub`: private repo, same data via load_dataset(REPO), stale shards removed."""
    from pannuke_hf.commands.export import main

    out = tmp_path / "out"
    common = ["--data-dir", str(raw_root), "--out", str(out), "--cache-dir", str(tmp_path / "build")]
    assert main(common + ["--push-to-hub", "pannuke", "--private", "--max-shard-size", SMALL_SHARD]) == 0
    assert "tester/pannuke" in capsys.readouterr().out
    repo = hub_server.repos[("dataset", "tester/pannuke")]
    assert repo.private
    first = sorted(p.name for p in (hub_server.repo_dir("tester/pannuke", "dataset") / "data").iterdir())
    assert len(first) > 3

    # re-export with one shard per split and push again: the old shards disappear from the repo
    assert main(common + ["--push-to-hub", "tester/pannuke", "--private", "--max-shard-size", "1GB"]) == 0
    second = sorted(p.name for p in (hub_server.repo_dir("tester/pannuke", "dataset") / "data").iterdir())
    assert second == [f"{split}-00000-of-00001.parquet" for split in ("fold1", "fold2", "fold3")]

    card = (hub_server.repo_dir("tester/pannuke", "dataset") / "README.md").read_text()
    assert 'load_dataset("tester/pannuke")' in card

    loaded = datasets.load_dataset("tester/pannuke", cache_dir=str(tmp_path / "dl"))
    for split in folds:
        assert loaded[split].features == folds[split].features
        assert _decoded_rows(loaded[split]) == _decoded_rows(folds[split])

    # the token authenticated the writes and the private read, and was written nowhere
    assert f"Bearer {hub_server.token}" in hub_server.authorizations()
    for path in list(out.rglob("*")) + list(hub_server.root.rglob("*")):
        if path.is_file():
            assert hub_server.token.encode() not in path.read_bytes(), path


def test_cli_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    from pannuke_hf.commands.export import main

    missing = tmp_path / "no-such-folder"
    out = tmp_path / "out"
    assert main(["--data-dir", str(missing), "--out", str(out)]) == 1  # a data error (pannuke_hf.errors)
    err = capsys.readouterr().err
    assert str(missing) in err and "--data-dir" in err and "no such folder" in err
    assert not out.exists()


def test_cli_bad_arguments(tmp_path, raw_root, capsys):
    from pannuke_hf.commands.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(raw_root)])  # --out missing
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(raw_root), "--out", str(tmp_path / "o"), "--private"])
    assert exit_info.value.code == 2
    assert "--private only applies with --push-to-hub" in capsys.readouterr().err


def test_refuses_foreign_non_empty_folder_and_bad_shard_size(folds, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        export_dataset(folds, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    with pytest.raises(ValueError, match="max_shard_size"):
        export_dataset(folds, tmp_path / "x", max_shard_size=0)
    assert not (tmp_path / "x" / "README.md").exists()


def test_re_export_replaces_previous_export(folds, tmp_path):
    out = tmp_path / "out"
    first = export_dataset(folds, out, max_shard_size=SMALL_SHARD)
    second = export_dataset(folds, out, max_shard_size="1GB")
    on_disk = sorted(p.name for p in (out / "data").iterdir())
    assert on_disk == sorted(n.split("/")[1] for names in second.shards.values() for n in names)
    assert len(on_disk) < sum(len(v) for v in first.shards.values())


def test_splits_with_different_features_are_refused(folds, tmp_path):
    odd = datasets.DatasetDict({"fold1": folds["fold1"], "fold2": folds["fold2"].remove_columns(["index"])})
    with pytest.raises(ValueError, match="fold2"):
        export_dataset(odd, tmp_path / "out")


def test_cli_hub_refusal_is_a_clear_error(hub_server, raw_root, tmp_path, monkeypatch, capsys):
    """A token the Hub rejects gives exit status 1 and a message naming the repository."""
    from pannuke_hf.commands.export import main

    monkeypatch.setenv("HF_TOKEN", "hf_not_valid")
    argv = ["--data-dir", str(raw_root), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "b")]
    assert main(argv + ["--push-to-hub", "tester/pannuke"]) == 1
    assert "cannot create 'tester/pannuke'" in capsys.readouterr().err
    assert ("dataset", "tester/pannuke") not in hub_server.repos


def test_cli_unreachable_hub_is_a_one_line_error(hub_server, raw_root, tmp_path, monkeypatch, capsys):
    """No network (connection refused) gives exit status 1 and one line, not httpx's traceback."""
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    from pannuke_hf.commands.export import main

    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", closed)
    argv = ["--data-dir", str(raw_root), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "b")]
    assert main(argv + ["--push-to-hub", "tester/pannuke"]) == 1
    err = capsys.readouterr().err
    assert "pannuke-hf export: error: cannot create 'tester/pannuke' on the Hub" in err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error" in line]) == 1
