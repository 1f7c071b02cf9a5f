"""``pannuke-hf score`` end to end on a generated fold in the release format."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pannuke_hf.cli import main as cli_main
from pannuke_hf.commands.score import normalise_tissue
from pannuke_hf.constants import raw_relpaths
from pannuke_hf.metrics.pq import PanNukeInstanceMetrics


def fold3(raw_root):
    rel = raw_relpaths(3)
    masks = np.load(raw_root / rel["masks"])
    types = np.load(raw_root / rel["types"])
    return masks, [str(t) for t in types]


def make_prediction(masks: np.ndarray) -> np.ndarray:
    """Truth with nuclei of the left half removed in every other patch, in 5 int32 channels."""
    pred = masks[..., :5].astype(np.int32).copy()
    pred[::2, :, :128] = 0
    return pred


def expected_scores(masks: np.ndarray, pred: np.ndarray, tissues) -> dict:
    metric = PanNukeInstanceMetrics()
    for i in range(len(masks)):
        metric.update_release(masks[i], pred[i], tissues[i] if tissues else None)
    return metric.compute()


@pytest.mark.parametrize("source", ["folder", "zip", "fold-folder", "masks-file"])
def test_score_command_end_to_end(raw_root, raw_zips, tmp_path, capsys, source):
    masks, tissues = fold3(raw_root)
    pred = make_prediction(masks)
    np.save(tmp_path / "pred.npy", pred)
    true = {
        "folder": [str(raw_root), "--fold", "3"],
        "zip": [str(raw_zips / "fold_3.zip")],
        "fold-folder": [str(raw_root / "Fold 3")],
        "masks-file": [str(raw_root / raw_relpaths(3)["masks"])],
    }[source]
    out = tmp_path / "out"
    status = cli_main(
        ["score", "--true", *true, "--pred", str(tmp_path / "pred.npy"), "--out", str(out), "--no-progress"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "## Per tissue" in printed and "mPQ (tissue-averaged)" in printed

    expected = expected_scores(masks, pred, tissues)
    document = json.loads((out / "scores.json").read_text())
    assert document["num_images"] == len(masks)
    for key in ("mPQ", "bPQ", "mPQ_image", "F1_detection", "PQ_neoplastic"):
        assert document["summary"][key] == pytest.approx(expected[key], abs=1e-12)
    # The removed nuclei make the prediction imperfect, but it still finds most of them.
    assert 0.3 < document["summary"]["bPQ"] < 0.99
    assert {row["tissue"] for row in document["per_tissue"]} == set(tissues)
    with open(out / "per_tissue.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(int(row["images"]) for row in rows) == len(masks)
    with open(out / "per_image.csv") as handle:
        per_image = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in per_image] == list(range(len(masks)))
    assert per_image[1]["bPQ"] == ""  # patch 1 has no nucleus: NaN, written as an empty cell
    with open(out / "per_class.csv") as handle:
        assert [r["class"] for r in csv.DictReader(handle)] == [
            "neoplastic", "inflammatory", "connective / soft tissue", "dead", "non-neoplastic epithelial"
        ]  # fmt: skip


def test_score_with_two_processes_and_tissue_override(raw_root, tmp_path, capsys):
    masks, tissues = fold3(raw_root)
    pred = make_prediction(masks)
    np.save(tmp_path / "pred.npy", pred)
    pretty = np.array([t.replace("-", " ").replace("HeadNeck", "Head & Neck") for t in tissues])
    np.save(tmp_path / "types.npy", pretty)
    status = cli_main(["score", "--true", str(raw_root), "--fold", "3", "--pred", str(tmp_path / "pred.npy"),
                       "--tissues", str(tmp_path / "types.npy"), "--num-proc", "2", "--out", str(tmp_path / "o"),
                       "--no-progress", "--radius", "6"])  # fmt: skip
    assert status == 0
    document = json.loads((tmp_path / "o" / "scores.json").read_text())
    expected = expected_scores(masks, pred, tissues)
    assert document["summary"]["mPQ"] == pytest.approx(expected["mPQ"], abs=1e-12)
    assert {row["tissue"] for row in document["per_tissue"]} == set(tissues)  # names normalised
    assert document["radius"] == 6.0


def test_normalise_tissue_maps_hub_names():
    assert normalise_tissue("Bile Duct") == "Bile-duct"
    assert normalise_tissue("Head & Neck") == "HeadNeck"
    assert normalise_tissue("adrenal_gland") == "Adrenal_gland"
    assert normalise_tissue("Somewhere") == "Somewhere"


def test_bad_data_exits_1_naming_file_and_patch(raw_root, tmp_path, capsys):
    masks, _ = fold3(raw_root)
    pred = make_prediction(masks).astype(np.float64)
    pred[2, 10, 10, 1] = np.nan
    np.save(tmp_path / "nan.npy", pred)
    args = ["score", "--true", str(raw_root), "--fold", "3", "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli_main([*args, "--pred", str(tmp_path / "nan.npy")]) == 1
    err = capsys.readouterr().err
    assert "nan.npy" in err and "patch 2" in err and "channel 1 (inflammatory)" in err and "NaN" in err

    np.save(tmp_path / "short.npy", make_prediction(masks)[:3])
    assert cli_main([*args, "--pred", str(tmp_path / "short.npy")]) == 1
    assert "differ in (N, H, W)" in capsys.readouterr().err

    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert cli_main([*args, "--pred", str(tmp_path / "junk.npy")]) == 1


def test_usage_errors_exit_2_and_missing_inputs_exit_1(raw_root, tmp_path, capsys):
    np.save(tmp_path / "pred.npy", np.zeros((1, 4, 4, 6)))
    # a missing input file or folder: the work failed (1), as for every command (docs/cli.md)
    assert cli_main(["score", "--true", str(tmp_path / "nothing"), "--pred", str(tmp_path / "pred.npy")]) == 1
    assert "--true" in (err := capsys.readouterr().err) and "nothing: no such file or folder" in err
    assert cli_main(["score", "--true", str(raw_root), "--pred", str(tmp_path / "missing.npy")]) == 1
    assert "--pred" in (err := capsys.readouterr().err) and "missing.npy: no such file" in err
    # A folder with all three folds needs --fold.
    assert cli_main(["score", "--true", str(raw_root), "--pred", str(tmp_path / "pred.npy")]) == 2
    assert "pass --fold" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["score", "--pred", "x.npy"])
    assert exit_info.value.code == 2


def test_misspelt_tissue_is_refused_with_the_valid_names(raw_root, tmp_path, capsys):
    masks, types = fold3(raw_root)
    np.save(tmp_path / "pred.npy", make_prediction(masks))
    tissues = list(types)
    tissues[1] = "Brest"
    np.save(tmp_path / "types.npy", np.array(tissues))
    argv = ["score", "--true", str(raw_root), "--fold", "3", "--pred", str(tmp_path / "pred.npy")]
    argv += ["--tissues", str(tmp_path / "types.npy"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "patch 1" in err and "unknown tissue 'Brest'" in err and "Breast" in err and "Adrenal_gland" in err
    assert not (tmp_path / "o").exists()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from pannuke_hf.cli import main\n"
        "try:\n    main(['score', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--pred PRED.npy" in out
    if _pannuke_imports_torch():
        pytest.skip("`import pannuke_hf` itself imports torch")
    assert "TORCH False False" in out


def _pannuke_imports_torch() -> bool:
    code = "import sys, pannuke_hf; print('torch' in sys.modules)"
    return (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
    )


def test_console_script_runs(raw_root, tmp_path):
    # the script installed beside this interpreter (the venv's bin/ need not be on PATH)
    beside = Path(sys.executable).parent / "pannuke-hf"
    exe = str(beside) if beside.exists() else shutil.which("pannuke-hf")
    assert exe is not None, "the pannuke-hf console script is not installed (pip install -e .)"
    masks, _ = fold3(raw_root)
    np.save(tmp_path / "pred.npy", masks)  # a perfect prediction, float64 with 6 channels
    done = subprocess.run(
        [exe, "score", "--true", str(raw_root / "Fold 3"), "--pred", str(tmp_path / "pred.npy"),
         "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "o" / "scores.json").read_text())["summary"]
    assert summary["F1_detection"] == 1.0
    assert summary["bPQ"] == pytest.approx(1.0, abs=1e-5)
