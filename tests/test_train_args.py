"""Argument parsing of train.py: config files, flag overrides, clear errors for bad input."""

from __future__ import annotations

import json

import pytest

from pannuke_hf.training.arguments import parse_arguments
from pannuke_hf.training.run import main


def test_yaml_values_and_flag_override(tmp_path):
    config = tmp_path / "run.yaml"
    # "1e-3" without a dot is a string for YAML 1.1; the parser still types it as a float.
    config.write_text("learning_rate: 1e-3\nimage_size: 64\nsplit_scheme: fold2\nmax_steps: 7\n")
    data_args, _, args = parse_arguments([str(config), "--image_size", "96", "--output_dir", str(tmp_path)])
    assert args.learning_rate == pytest.approx(1e-3) and isinstance(args.learning_rate, float)
    assert data_args.image_size == 96  # the flag wins over the file
    assert data_args.split_scheme == "fold2" and args.max_steps == 7


def test_json_config(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"base_channels": 8, "sync_bn": True, "output_dir": str(tmp_path)}))
    _, model_args, args = parse_arguments([str(config)])
    assert model_args.base_channels == 8 and args.sync_bn is True


def test_unknown_config_key_names_key_and_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 0.01\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*learnig_rate"):
        parse_arguments([str(config)])


def test_unknown_flag_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--not_an_argument"):
        parse_arguments(["--output_dir", str(tmp_path), "--not_an_argument", "1"])


def test_bad_split_scheme(tmp_path):
    with pytest.raises(SystemExit):  # argparse choices
        parse_arguments(["--output_dir", str(tmp_path), "--split_scheme", "fold9"])


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    status = main(["--data_dir", str(missing), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"])
    assert status == 2
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err


def test_no_data_at_all_is_a_clear_error(tmp_path, capsys):
    assert main(["--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]) == 2
    assert "--data_dir" in capsys.readouterr().err
