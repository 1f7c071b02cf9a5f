"""Argument parsing of train.py: config files, flag overrides, clear errors for bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from pannuke_hf.training.arguments import parse_arguments
from pannuke_hf.training.run import default_argv, main

DEMO_YAML = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


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
    assert status == 1  # a data error (pannuke_hf.errors)
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err


def test_no_data_at_all_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "empty.yaml"
    config.write_text("# no data_dir, no synthetic_data\n")
    assert main([str(config), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]) == 2
    assert "--data_dir" in capsys.readouterr().err


def test_flags_alone_override_the_demo_config(tmp_path):
    demo = yaml.safe_load(DEMO_YAML.read_text())  # read here, independently of the parser
    data_args, model_args, args = parse_arguments(
        default_argv(["--torch_num_threads", "1", "--max_steps", "3"])
    )
    assert args.torch_num_threads == 1 and args.max_steps == 3  # the flags win ...
    assert data_args.synthetic_data is True and demo["synthetic_data"] is True  # ... over the demo
    assert data_args.image_size == demo["image_size"] and model_args.base_channels == demo["base_channels"]
    assert args.learning_rate == demo["learning_rate"] and args.output_dir == demo["output_dir"]
    assert args.max_grad_norm == demo["max_grad_norm"]
    # No arguments at all: the demo as written.
    data_args, _, args = parse_arguments(default_argv([]))
    assert args.max_steps == demo["max_steps"] and args.torch_num_threads == demo["torch_num_threads"]
    # A configuration file given: the demo is not involved.
    config = tmp_path / "run.yaml"
    config.write_text("image_size: 64\n")
    data_args, _, args = parse_arguments(default_argv([str(config), "--output_dir", str(tmp_path)]))
    assert data_args.synthetic_data is False and data_args.image_size == 64 and args.max_steps == -1


def test_data_dir_flag_alone_reads_data_instead_of_generating(tmp_path):
    data_args, _, _ = parse_arguments(default_argv(["--data_dir", str(tmp_path)]))
    assert data_args.data_dir == str(tmp_path) and data_args.synthetic_data is False
    data_args, _, _ = parse_arguments(default_argv([f"--data_dir={tmp_path}", "--synthetic_data", "true"]))
    assert data_args.synthetic_data is True


def test_train_py_with_one_flag_runs_the_demo(tmp_path, monkeypatch, capsys):
    """`python train.py --torch_num_threads 1` (shortened with more flags): the demo runs."""
    monkeypatch.setenv("PANNUKE_HF_DEMO_CACHE", str(tmp_path / "demo-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "demo_output"
    argv = [
        "--torch_num_threads", "1", "--max_steps", "2", "--synthetic_patches_per_fold", "3",
        "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "false",
        "--prediction_figure_samples", "0", "--output_dir", str(out),
        "--dataset_cache_dir", str(tmp_path / "datasets-cache"),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic_data"] is True and results["image_size"] == 128
    assert (out / "model.safetensors").is_file()
    assert list((tmp_path / "demo-cache").glob("raw-3-0-*/Fold 3"))  # generated inside tmp_path


# ------------------------------------------------------------------------------------------
# Standard TrainingArguments that the reference optimizer / schedule would ignore (issue 18.11)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--optim", "adamw_torch"], "--optim"),
        (["--lr_scheduler_type", "cosine"], "--lr_scheduler_type"),
        (["--warmup_steps", "3"], "--warmup_steps"),
        (["--optimizer", "hf", "--lr_scheduler_type", "cosine"], "--lr_scheduler_type"),
        (["--lr_schedule", "hf", "--optim", "adamw_torch"], "--optim"),
    ],
)
def test_ignored_standard_arguments_are_usage_errors(tmp_path, capsys, flags, named):
    argv = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", *flags]
    with pytest.raises(ValueError, match=named):
        parse_arguments(default_argv(argv))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "error" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any work


def test_ignored_standard_arguments_in_a_config_file_are_refused(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("optim: adamw_torch\nsynthetic_data: true\n")
    with pytest.raises(ValueError, match="--optim"):
        parse_arguments([str(config), "--output_dir", str(tmp_path / "out")])
    assert main([str(config), "--output_dir", str(tmp_path / "out")]) == 2
    assert "--optim" in capsys.readouterr().err
    # warmup_steps: 0 (as the reference configs write it) is no warm-up: accepted.
    config.write_text("warmup_steps: 0\nsynthetic_data: true\n")
    parse_arguments([str(config), "--output_dir", str(tmp_path / "out")])


def test_standard_optimizer_and_schedule_are_honoured_with_hf(tmp_path):
    from _models import tiny_unet_fcn

    from pannuke_hf.training.trainer import PanNukeTrainer

    _, _, args = parse_arguments(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none",
         "--optimizer", "hf", "--optim", "adamw_torch", "--learning_rate", "0.1",
         "--lr_schedule", "hf", "--lr_scheduler_type", "cosine", "--warmup_steps", "3"]
    )  # fmt: skip
    trainer = PanNukeTrainer(model=tiny_unet_fcn(), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=13)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    lrs = []
    for _ in range(13):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    # linear warm-up over 3 steps, then cosine decay from 0.1 to 0 over the remaining 10
    expected = [0.1 * t / 3 for t in range(3)] + [
        0.1 * 0.5 * (1 + math.cos(math.pi * (t - 3) / 10)) for t in range(3, 13)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_reentrant_activation_checkpointing_is_a_usage_error(tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--gradient_checkpointing", "true",
            "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']  # fmt: skip
    with pytest.raises(ValueError, match="use_reentrant"):
        parse_arguments(default_argv(argv))
    assert main(argv) == 2
    assert "use_reentrant" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# --help (issue 19.6)
# ------------------------------------------------------------------------------------------


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def option_default(text: str, option: str) -> str:
    match = re.search(re.escape(option) + r" .*?\(default: ([^)]*)\)", text)
    assert match, option
    return match.group(1)


def test_help_shows_the_real_defaults_and_names_the_demo(capsys):
    text = help_text(capsys, ["--help"])
    # The arguments' own defaults (the reference's), not the demo configuration's 128 / 8 / 3 / true / 0.2.
    assert option_default(text, "--image-size IMAGE_SIZE") == "512"
    assert option_default(text, "--base-channels BASE_CHANNELS") == "64"
    assert option_default(text, "--num-stages NUM_STAGES") == "5"
    assert option_default(text, "--classifier-init-std CLASSIFIER_INIT_STD") == "0.01"
    assert option_default(text, "--synthetic-data [SYNTHETIC_DATA]") == "False"
    assert "Without a configuration file the demo configuration (configs/demo.yaml" in text
    # The parsed defaults behind it agree with what is shown.
    data_args, model_args, _ = parse_arguments(["--output_dir", "x"])
    assert (data_args.image_size, model_args.base_channels, data_args.synthetic_data) == (512, 64, False)
