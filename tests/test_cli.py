"""The command line: errors in each command's own words, model-folder checks, exit codes, prog names.

Exit codes (pannuke_hf.errors): 0 success, 1 the work failed (data, model, files), 2 the command
line cannot be used.
"""

from __future__ import annotations

import pytest
import yaml

from pannuke_hf.cli import main as cli_main

UNDERSCORE_OPTIONS = ("--data_dir", "--synthetic_data", "--model_name_or_path", "--output_dir")


def assert_own_options(err: str, *expected: str) -> None:
    for option in expected:
        assert option in err, err
    for option in UNDERSCORE_OPTIONS:  # train.py's spelling, not the command's
        assert option not in err, err


def test_evaluate_missing_data_dir_speaks_its_own_options(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    status = cli_main(["evaluate", "--model", str(model), "--data-dir", "/nonexistent"])
    err = capsys.readouterr().err
    assert status == 1
    assert "/nonexistent" in err and "no such folder" in err
    assert_own_options(err, "--data-dir", "make-synthetic")


@pytest.mark.parametrize("command", ["prepare", "stats", "export"])
def test_data_commands_missing_data_dir(command, tmp_path, capsys):
    argv = [command, "--data-dir", str(tmp_path / "nowhere")] + (
        ["--out", str(tmp_path / "out")] if command == "export" else []
    )
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert f"pannuke-hf {command}: error: --data-dir" in err and "nowhere" in err and "no such folder" in err
    assert_own_options(err, "--data-dir")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_model_folder_that_does_not_exist(command, raw_root, tmp_path, capsys):
    tail = (
        [str(tmp_path), "--out", str(tmp_path / "o")]
        if command == "predict"
        else ["--data-dir", str(raw_root)]
    )
    assert cli_main([command, "--model", "/nonexistent_model", *tail]) == 1
    err = capsys.readouterr().err
    assert "--model /nonexistent_model: no such folder" in err
    assert "Repo id" not in err and "alphanumeric" not in err


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_model_folder_without_a_model(command, raw_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    tail = (
        [str(tmp_path), "--out", str(tmp_path / "o")]
        if command == "predict"
        else ["--data-dir", str(raw_root)]
    )
    assert cli_main([command, "--model", str(empty), *tail]) == 1
    err = capsys.readouterr().err
    assert "holds no model (no config.json)" in err and str(empty) in err
    assert "Unrecognized model" not in err


def test_model_check_leaves_hub_ids_to_the_hub(tmp_path):
    from pannuke_hf.commands._common import InputError, check_model_source

    check_model_source("someone/unet-fcn-pannuke")  # a Hub id: no local check
    check_model_source("unet-fcn")
    for bad in ("/nonexistent_model", "./nowhere", "../up/there", "a/b/c"):
        with pytest.raises(InputError, match="no such folder"):
            check_model_source(bad)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_model_source(str(tmp_path / "file.txt"))


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["evaluate", "--model", "m", "--data-dir", "d", "--split", "test"],  # no test split in `reference`
    ],
)
def test_usage_errors_return_2(argv, capsys):
    assert cli_main(argv) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "--void-label", "300"],
        ["export", "--out", "o", "--max-shard-size", "lots"],
        ["export", "--out", "o", "--private"],
        ["evaluate", "--data-dir", "d"],  # --model missing
        ["make-synthetic", "out", "--patches-per-fold", "0"],
    ],
)
def test_argparse_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"pannuke-hf {argv[0]}" in err  # the usage line names the command


def test_train_help_names_pannuke_hf_train(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pannuke-hf train ")


def test_train_exit_codes(tmp_path, capsys):
    out = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    assert cli_main(["train", "--no_such_option", "1", *out]) == 2  # usage
    assert "pannuke-hf train: error:" in capsys.readouterr().err
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text(yaml.safe_dump({"no_such_key": 1}))
    assert cli_main(["train", str(bad_key), *out]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert cli_main(["train", "--data_dir", str(tmp_path / "missing"), *out]) == 1  # data
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err


def test_model_card_names_generated_data_not_pannuke():
    from pannuke_hf.training.model_card import render_model_card

    results = {"summary": {"mIoU": 0.5, "mDice": 0.6}}

    def header(text: str) -> dict:
        return yaml.safe_load(text.split("---")[1])

    generated = header(render_model_card("demo", results=results, synthetic_data=True))
    datasets = {entry["dataset"]["name"] for entry in generated["model-index"][0]["results"]}
    assert datasets and not any("PanNuke" == name for name in datasets), datasets
    assert all("Generated" in name for name in datasets), datasets
    assert "datasets" not in generated  # the card does not claim PanNuke as training data

    real = header(render_model_card("run", results=results, synthetic_data=False))
    assert {entry["dataset"]["name"] for entry in real["model-index"][0]["results"]} == {"PanNuke"}
    assert real["datasets"] == ["pannuke"]
