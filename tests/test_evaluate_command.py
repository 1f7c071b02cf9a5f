"""``pannuke-hf evaluate``: the checkpoint's own split scheme, void pixels, nuclei options, early checks.

Issue 18 items 1, 3, 6 and issue 19 item 5: results that were silently wrong (training patches
scored as validation, void pixels scored as a class, --nuclei-from ignored) and messages that came
only after the dataset was built.
"""

from __future__ import annotations

import json

import pytest

from pannuke_hf.cli import main as cli_main
from pannuke_hf.data.splits import read_training_record, split_overlaps_training, training_data_record


def save_checkpoint(
    folder, scheme: str | None = "fold1", instance_head: str | None = None, void_label: int = 0
):
    """A tiny UNet-FCN saved as `train.py` saves one (with its training record unless ``scheme`` is None)."""
    from tests._models import tiny_unet_fcn

    model = tiny_unet_fcn()
    if scheme is not None:
        model.config.training_data = training_data_record(scheme, void_label=void_label)
    if instance_head:
        model.config.instance_head = instance_head
    model.save_pretrained(folder)
    return str(folder)


def evaluate(model, data, out, *extra):
    argv = ["evaluate", "--model", model, "--data-dir", str(data), "--out", str(out), "--cpu"]
    return cli_main([*argv, "--image-size", "32", "--batch-size", "4", "--nuclei", "no", *extra])


def test_overlap_rule_of_the_split_schemes():
    assert split_overlaps_training("fold1", "fold1", "train")
    assert not split_overlaps_training("fold1", "fold1", "validation")
    assert not split_overlaps_training("fold1", "fold1", "test")
    # fold1 trains on fold 1; fold3's test fold is fold 1, fold2's validation fold is fold 1
    assert split_overlaps_training("fold1", "fold3", "test")
    assert split_overlaps_training("fold1", "fold2", "validation")
    assert not split_overlaps_training("fold1", "fold2", "test")
    # the reference split draws both of its splits from every fold
    assert split_overlaps_training("fold1", "reference", "validation")
    assert split_overlaps_training("reference", "fold2", "test")
    assert not split_overlaps_training("reference", "reference", "validation")


def test_fold_checkpoint_defaults_to_its_scheme_and_refuses_its_training_fold(raw_root, tmp_path, capsys):
    model = save_checkpoint(tmp_path / "row1", "fold1")
    # before: --split-scheme reference by default, "Results on `validation`" holding fold-1 patches
    assert evaluate(model, raw_root, tmp_path / "o1") == 0
    out = capsys.readouterr().out
    assert "split scheme fold1 (the checkpoint's training scheme)" in out
    document = json.loads((tmp_path / "o1" / "results.json").read_text())
    assert document["split_scheme"] == "fold1" and document["num_images"] == 5  # fold 2: 5 patches
    assert document["overlaps_training_data"] is False

    for extra in (
        ["--split-scheme", "reference"],
        ["--split", "train"],
        ["--split-scheme", "fold3", "--split", "test"],
    ):
        assert evaluate(model, raw_root, tmp_path / "refused", *extra) == 2
        err = capsys.readouterr().err
        assert "was trained on" in err and "--allow-training-data" in err
    assert not (tmp_path / "refused").exists()

    assert evaluate(model, raw_root, tmp_path / "o2", "--split", "train", "--allow-training-data") == 0
    assert "WARNING" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "results.json").read_text())["overlaps_training_data"] is True


def test_older_checkpoints_are_read_from_their_results_or_card(tmp_path):
    plain = tmp_path / "plain"
    save_checkpoint(plain, scheme=None)
    assert read_training_record(plain) is None
    (plain / "results.json").write_text(json.dumps({"split": "test", "split_scheme": "fold2"}))
    assert read_training_record(plain)["split_scheme"] == "fold2"
    # an evaluation's results.json (it names the checkpoint) says nothing about training
    (plain / "results.json").write_text(json.dumps({"split_scheme": "fold3", "checkpoint": "x"}))
    (plain / "README.md").write_text("- data: PanNuke, split scheme `fold3`, evaluated on `test`\n")
    assert read_training_record(plain)["split_scheme"] == "fold3"
    checkpoint = tmp_path / "plain" / "checkpoint-10"
    save_checkpoint(checkpoint, scheme=None)
    assert read_training_record(checkpoint)["split_scheme"] == "fold3"  # from its run folder


def test_void_label_255_leaves_void_pixels_out_of_the_metrics(raw_root, tmp_path, capsys):
    from pannuke_hf.commands._common import void_label

    model = save_checkpoint(tmp_path / "m", "reference")
    scores = {}
    for value in ("0", "255"):
        out = tmp_path / f"void{value}"
        assert evaluate(model, raw_root, out, "--split", "validation", "--void-label", value) == 0
        document = json.loads((out / "results.json").read_text())
        assert document["void_label"] == int(value)
        scores[value] = document["summary"]
    capsys.readouterr()
    # the validation split holds void patches (every fold's patch 2 is all void): counted as
    # background with 0, left out with 255
    assert scores["0"] != scores["255"]
    with pytest.raises(SystemExit) as exit_info:
        evaluate(model, raw_root, tmp_path / "bad", "--void-label", "3")
    assert exit_info.value.code == 2
    assert "expected 0 or 255" in capsys.readouterr().err
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        void_label("254")


def test_void_label_255_reaches_the_training_data(raw_root, tmp_path):
    import numpy as np

    from pannuke_hf.training.arguments import parse_arguments
    from pannuke_hf.training.data import load_splits

    data_args, _, _ = parse_arguments(["--void_label", "255", "--output_dir", str(tmp_path)])
    assert data_args.void_label == 255
    splits = load_splits(raw_root, "fold1", str(tmp_path / "cache"), void_label=data_args.void_label)
    void_patch = np.asarray(splits["train"][2]["semantic_mask"])  # patch 2 of every fold is all void
    assert (void_patch == 255).all()
    config = tmp_path / "c.yaml"
    config.write_text("void_label: 3\n")
    with pytest.raises(ValueError, match="void_label"):
        parse_arguments([str(config), "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        parse_arguments(["--void_label", "3", "--output_dir", str(tmp_path)])


def test_nuclei_from_scores_nuclei_and_hv_on_a_plain_model_is_a_usage_error(raw_root, tmp_path, capsys):
    model = save_checkpoint(tmp_path / "m", "fold1")
    argv = ["evaluate", "--model", model, "--data-dir", str(raw_root), "--cpu", "--image-size", "32"]
    # before: silently ignored without --nuclei yes
    assert cli_main([*argv, "--out", str(tmp_path / "w"), "--nuclei-from", "components"]) == 0
    out = capsys.readouterr().out
    assert "Nuclei (nuclei from components (the semantic map, connected components)" in out
    nuclei = json.loads((tmp_path / "w" / "results.json").read_text())["nuclei"]
    assert nuclei["nuclei_from"] == "components" and "mPQ" in nuclei

    empty = tmp_path / "empty"
    empty.mkdir()  # building data from it would fail with exit 1: 2 proves the check came first
    bad = ["evaluate", "--model", model, "--data-dir", str(empty), "--cpu"]
    assert cli_main([*bad, "--nuclei", "yes", "--nuclei-from", "hv"]) == 2
    assert "--nuclei-from hv needs a model with the hv instance head" in capsys.readouterr().err
    assert cli_main([*bad, "--nuclei", "no", "--nuclei-from", "watershed"]) == 2
    assert "does not go with --nuclei no" in capsys.readouterr().err


def test_mistyped_model_is_no_such_folder_before_any_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    empty = tmp_path / "data"
    empty.mkdir()
    # `runs/row1` has the form of a Hub id, but runs/ is a local folder: the user meant a folder
    assert cli_main(["evaluate", "--model", "runs/row1", "--data-dir", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "--model runs/row1: no such folder (the folder runs/ exists" in err and "huggingface.co" not in err
    # a Hub id that is not in the cache while offline (the suite runs with HF_HUB_OFFLINE=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert cli_main(["evaluate", "--model", "someone/row1", "--data-dir", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "--model someone/row1: no such folder" in err and "offline" in err


def test_nuclei_table_names_classes_by_their_full_names():
    """The per-class PQ headers people read use the full names (label 5 is non-neoplastic epithelial)."""
    from pannuke_hf.constants import CLASS_FULL_NAMES, CLASS_NAMES
    from pannuke_hf.training.evaluation import nuclei_table

    metrics = {"eval_bPQ": 0.5, "eval_mPQ": 0.4, "eval_F1_detection": 0.9}
    metrics.update({f"eval_PQ_{name}": 0.25 for name in CLASS_NAMES[1:]})
    header = nuclei_table(metrics).splitlines()[4]
    assert header == "| " + " | ".join(f"PQ {name} (%)" for name in CLASS_FULL_NAMES[1:]) + " |"
    assert "PQ non-neoplastic epithelial (%)" in header and "PQ connective / soft tissue (%)" in header
