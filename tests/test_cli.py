"""The command line: errors in each command's own words, model-folder checks, exit codes, prog names.

Exit codes (pannuke_hf.errors): 0 success, 1 the work failed (data, model, files), 2 the command
line cannot be used.
"""

from __future__ import annotations

import importlib.util

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

    check_model_source("someone/unet-fcn-pannuke", resolve_hub=False)  # a Hub id: no local check
    check_model_source("unet-fcn", resolve_hub=False)
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
        # no test split in `reference`
        ["evaluate", "--model", "m", "--data-dir", "d", "--split", "test", "--split-scheme", "reference"],
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


# ------------------------------------------------------------------------------------------------
# One exit-code rule for every command (docs/cli.md, "Exit codes"): a missing input file or folder
# is "the work failed" (1), a command line that cannot be used is 2; PANNUKE_HF_TRACEBACK=1 turns
# the one-line error back into the traceback, for every command.
# ------------------------------------------------------------------------------------------------

#: command -> arguments naming an input that does not exist ("nothere" in a temporary folder).
MISSING_INPUT: dict[str, list[str]] = {
    "prepare": ["--data-dir", "{t}/nothere"],
    "stats": ["--data-dir", "{t}/nothere"],
    "export": ["--data-dir", "{t}/nothere", "--out", "{t}/out"],
    "convert-mmseg": ["{t}/nothere.pth", "{t}/out"],
    "train": ["--data_dir", "{t}/nothere", "--output_dir", "{t}/out", "--use_cpu", "true"],
    "evaluate": ["--model", "{model}", "--data-dir", "{t}/nothere"],
    "predict": ["--model", "{model}", "{t}/nothere.png", "--out", "{t}/out"],
    "predict --fold-dir": [
        "--model",
        "{model}",
        "--fold-dir",
        "{t}/nothere",
        "--out",
        "{t}/out.npy",
        "--format",
        "pannuke",
    ],  # fmt: skip
    "score": ["--true", "{t}/nothere", "--pred", "{t}/nothere.npy"],
    "protocol": ["--data-dir", "{t}/nothere"],
    "demo": ["--model", "{t}/nothere"],
    "space": ["{t}/space", "--model", "{t}/nothere"],
    "slide": ["{t}/nothere.svs", "--model", "{model}", "--out", "{t}/out"],
}

#: command -> a command line that cannot be used (exit 2, nothing done).
USAGE_ERROR: dict[str, list[str]] = {
    "make-synthetic": ["{t}/syn", "--patches-per-fold", "0"],
    "make-synthetic-slide": ["{t}/s.tiff", "--size", "not-a-size"],
    "prepare": ["--void-label", "3"],
    "stats": ["--data-dir", "{t}", "--void-label", "3"],
    "export": ["--out", "{t}/o", "--private"],
    "convert-mmseg": ["only-one-argument"],
    "train": ["--no_such_option", "1"],
    "evaluate": ["--model", "{model}", "--data-dir", "{t}", "--split", "test", "--split-scheme", "reference"],
    "predict": ["--model", "{model}", "{t}/x.png", "--batch-size", "0"],
    "score": ["--pred", "x.npy"],
    "protocol": ["--data-dir", "{t}", "--load_best_model_at_end", "true"],
    "demo": ["--model", "{model}", "--port", "0"],
    "space": ["{t}/space", "--private"],
    "slide": ["{t}/x.tiff"],
}


def _commands() -> list[str]:
    from pannuke_hf.cli import COMMANDS

    return list(COMMANDS)


def _argv(template: list[str], tmp_path, model) -> list[str]:
    return [arg.format(t=tmp_path, model=model) for arg in template]


def _status(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exit_info:  # argparse's own usage errors
        return int(exit_info.code)


@pytest.fixture
def model_dir(tmp_path):
    from tests._models import tiny_unet_fcn

    tiny_unet_fcn().save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_every_command_is_in_the_exit_code_tables():
    for command in _commands():
        assert command in USAGE_ERROR, f"add {command!r} to USAGE_ERROR (and docs/cli.md)"
        if command not in ("make-synthetic", "make-synthetic-slide"):  # they read no input
            assert command in MISSING_INPUT, f"add {command!r} to MISSING_INPUT (and docs/cli.md)"


@pytest.mark.parametrize("case", sorted(MISSING_INPUT))
def test_a_missing_input_is_exit_1_naming_it(case, tmp_path, model_dir, capsys, monkeypatch):
    command, *option = case.split()
    if command not in _commands():
        pytest.skip(f"no {command!r} command yet")
    if command in ("demo", "space") and not importlib.util.find_spec("gradio"):
        pytest.skip("gradio not installed")
    monkeypatch.delenv("PANNUKE_HF_TRACEBACK", raising=False)
    assert _status([command, *_argv(MISSING_INPUT[case], tmp_path, model_dir)]) == 1
    err = capsys.readouterr().err
    assert "nothere" in err, err  # the message names the input
    assert "Traceback" not in err


@pytest.mark.parametrize("command", sorted(USAGE_ERROR))
def test_a_command_line_that_cannot_be_used_is_exit_2(command, tmp_path, model_dir, capsys):
    if command not in _commands():
        pytest.skip(f"no {command!r} command yet")
    if not USAGE_ERROR[command]:
        pytest.skip(f"{command}: every argument combination is accepted by the parser")
    assert _status([command, *_argv(USAGE_ERROR[command], tmp_path, model_dir)]) == 2
    assert "error" in capsys.readouterr().err


#: Failures that raise (predict reports each missing image and goes on: its missing model instead).
TRACEBACK_CASE: dict[str, list[str]] = {
    **MISSING_INPUT,
    "predict": ["--model", "{t}/nothere", "{t}/x.png", "--out", "{t}/out"],
}


@pytest.mark.parametrize("case", sorted(TRACEBACK_CASE))
def test_traceback_variable_is_honoured_by_every_command(case, tmp_path, model_dir, monkeypatch, capsys):
    command, *option = case.split()
    if command not in _commands():
        pytest.skip(f"no {command!r} command yet")
    if command in ("demo", "space") and not importlib.util.find_spec("gradio"):
        pytest.skip("gradio not installed")
    argv = [command, *_argv(TRACEBACK_CASE[case], tmp_path, model_dir)]
    monkeypatch.setenv("PANNUKE_HF_TRACEBACK", "1")
    with pytest.raises(Exception) as raised:  # the exception itself, not a one-line message
        _status(argv)
    assert "nothere" in str(raised.value)
    monkeypatch.setenv("PANNUKE_HF_TRACEBACK", "0")  # "0" means off
    assert _status(argv) == 1
    assert "nothere" in capsys.readouterr().err


#: commands with a --device option, and arguments that would otherwise run.
DEVICE_COMMANDS: dict[str, list[str]] = {
    "predict": ["--model", "{model}", "{t}/x.png", "--out", "{t}/out"],
    "demo": ["--model", "{model}"],
    "slide": ["{t}/x.svs", "--model", "{model}", "--out", "{t}/out"],
}


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_device_cuda_without_cuda_is_one_line_naming_the_option(
    command, tmp_path, model_dir, capsys, monkeypatch
):
    import torch

    if command not in _commands():
        pytest.skip(f"no {command!r} command yet")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "x.png").write_bytes(b"")  # never read: the device is checked first
    (tmp_path / "x.svs").write_bytes(b"")
    assert _status([command, *_argv(DEVICE_COMMANDS[command], tmp_path, model_dir), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: this machine has no CUDA GPU" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_check_device_words():
    from pannuke_hf.commands._common import check_device
    from pannuke_hf.errors import UsageError

    check_device(None)
    check_device("cpu")
    with pytest.raises(UsageError, match="--device gpu0: not a device"):
        check_device("gpu0")


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--model", "m", "x.png", "--out", "o", "--batch-size", "0"],
        [
            "predict",
            "--model",
            "m",
            "x.png",
            "--out",
            "o",
            "--offset",
            "4",
            "4",
        ],  # --offset without --instances
        ["predict", "--model", "m", "x.png", "--out", "o", "--alpha", "2"],
        ["demo", "--port", "0"],
    ],
)
def test_usage_errors_name_the_command(argv, capsys):
    """docs/cli.md: every error is one line `pannuke-hf COMMAND: error: ...` (also predict's and demo's own checks)."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pannuke-hf {argv[0]}: error: ") and len(err.splitlines()) == 1, err
