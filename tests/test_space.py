"""`pannuke-hf space`: a ready-to-push Space folder, pushed to a (local, fake) Hub without leaking the token."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pannuke_hf.commands.space import main
from pannuke_hf.demo import processing

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE_ID = "pannuke-user/pannuke-demo"


def card_header(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


HUB_MODEL = "someone/unet-fcn-pannuke"


@pytest.fixture
def no_demo_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(processing, "checkpoint_search_paths", lambda: [tmp_path / "nothing_here"])


def card_of_run(synthetic: bool) -> str:
    """The card ``python train.py`` writes (generated data) or a PanNuke run writes."""
    from pannuke_hf.training.model_card import render_model_card

    return render_model_card(
        "run", results={"summary": {"mIoU": 0.5, "mDice": 0.6}}, synthetic_data=synthetic
    )


@pytest.fixture
def hub_model(hub_server, tmp_path):
    """A tiny checkpoint with the card of a PanNuke run, pushed to the fake Hub as ``HUB_MODEL``."""
    from huggingface_hub import HfApi
    from test_demo_app import save_tiny_checkpoint

    folder = save_tiny_checkpoint(tmp_path / "hub_ckpt")
    (folder / "README.md").write_text(card_of_run(synthetic=False))
    api = HfApi()
    api.create_repo(HUB_MODEL, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=HUB_MODEL)
    return HUB_MODEL


def test_space_folder_for_a_hub_model(hub_model, tmp_path, capsys):
    out = tmp_path / "space"
    assert main([str(out), "--model", hub_model]) == 0
    header = card_header((out / "README.md").read_text())
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert (out / header["app_file"]).is_file()
    assert header["license"] == "cc-by-nc-sa-4.0"  # the PanNuke data licence, from the model's card
    assert header["models"] == [hub_model]
    assert header["title"] and header["emoji"]
    assert 0 < len(header["short_description"]) <= 60  # the Hub refuses longer ones
    from importlib.metadata import version

    assert header["sdk_version"] == version("gradio")
    readme = (out / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "gamper2020pannuke" in readme
    assert "Model trained on [PanNuke](" in readme  # what its card says
    assert f"[`{hub_model}`](https://huggingface.co/{hub_model})" in readme
    assert f"{hub_model!r}" in (out / "app.py").read_text()
    assert not (out / "model").exists()

    # requirements: the package's own (setup.cfg) plus gradio, so the Space can import everything
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    declared = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    requirements = (out / "requirements.txt").read_text().split()
    assert set(declared) <= set(requirements)
    assert any(r.startswith("gradio") for r in requirements)
    # the package's code travels with the Space (no PyPI release needed)
    assert (out / "pannuke_hf" / "demo" / "app.py").is_file()
    assert len(list((out / "pannuke_hf" / "demo" / "examples").glob("*.png"))) == len(
        processing.EXAMPLE_PATCHES
    )
    assert not list(out.rglob("__pycache__"))


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and gradio: a minute or two
def test_space_bundles_a_local_checkpoint_and_its_app_builds_the_page(tmp_path):
    from test_demo_app import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt")
    (ckpt / "optimizer.pt").write_bytes(b"training state, not for the Space")
    out = tmp_path / "space"
    assert main([str(out), "--model", str(ckpt)]) == 0
    assert {p.name for p in (out / "model").iterdir()} >= {"config.json", "model.safetensors"}
    assert not (out / "model" / "optimizer.pt").exists()
    assert "models" not in card_header((out / "README.md").read_text())

    # Run the Space's app.py as the Space would (its folder first on the path), without launching.
    code = (
        "import runpy, sys; g = runpy.run_path('app.py', run_name='space_check'); "
        "import pannuke_hf, gradio; print(type(g['demo']).__name__, pannuke_hf.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=out, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    kind, package_file = done.stdout.split()[-2:]
    assert kind == "Blocks"
    assert Path(package_file).resolve().is_relative_to(out.resolve())  # the bundled copy was used


def test_space_without_model_or_demo_checkpoint_says_how_to_get_one(tmp_path, capsys, no_demo_checkpoint):
    assert main([str(tmp_path / "space")]) == 1
    err = capsys.readouterr().err
    assert "`python train.py`" in err and "--model" in err


def test_space_uses_the_demo_checkpoint_by_default(tmp_path, monkeypatch):
    from test_demo_app import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "demo_output")
    monkeypatch.setattr(processing, "checkpoint_search_paths", lambda: [tmp_path])
    out = tmp_path / "space"
    assert main([str(out)]) == 0
    assert (out / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "demo_output" / "model.safetensors"
    ).read_bytes()
    assert "MODEL = 'model'" in (out / "app.py").read_text()


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("private", [False, True])
def test_push_to_hub_creates_a_gradio_space_without_writing_the_token(
    hub_server, hub_model, tmp_path, capsys, private
):
    out = tmp_path / "space"
    argv = [str(out), "--model", hub_model, "--push-to-hub", SPACE_ID]
    assert main(argv + (["--private"] if private else [])) == 0
    repo = hub_server.repos[("space", SPACE_ID)]
    assert repo.private is private
    assert f"Bearer {hub_server.token}" in hub_server.authorizations()
    pushed = hub_server.repo_dir(SPACE_ID, "space")
    for name in ("app.py", "requirements.txt", "README.md", "pannuke_hf/demo/processing.py"):
        assert (pushed / name).read_bytes() == (out / name).read_bytes(), name
    assert card_header((pushed / "README.md").read_text())["sdk"] == "gradio"
    example = next((out / "pannuke_hf" / "demo" / "examples").glob("*.png"))
    assert hub_server.file_bytes(SPACE_ID, f"pannuke_hf/demo/examples/{example.name}", "space") == (
        example.read_bytes()
    )

    token = hub_server.token.encode()
    assert _files_containing(out, token) == []
    assert _files_containing(Path(hub_server.root), token) == []
    captured = capsys.readouterr()
    assert hub_server.token not in captured.out + captured.err
    assert SPACE_ID in captured.out


def test_push_failure_is_a_message(hub_server, hub_model, tmp_path, capsys):
    out = tmp_path / "space"
    assert main([str(out), "--model", hub_model, "--push-to-hub", SPACE_ID, "--token", "hf_wrong"]) == 1
    err = capsys.readouterr().err
    assert (
        f"pannuke-hf space: error: pushing to the Space {SPACE_ID!r} failed" in err and "Traceback" not in err
    )
    assert ("space", SPACE_ID) not in hub_server.repos


# ------------------------------------------------------------------------------------------
# The model is checked before anything is written (issue: a typo became a broken Space)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, expected",
    [
        ("absolute", "no such folder"),
        ("relative_typo", "no such folder"),
        ("folder_without_config", "holds no model"),
        ("config_without_weights", "holds no weights"),
        ("hub_id_not_on_the_hub", "no model 'someone/no-such-model' on the Hub"),
    ],
)
def test_space_refuses_a_model_that_does_not_exist_and_writes_nothing(
    hub_model, tmp_path, monkeypatch, capsys, case, expected
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text("{}")
    model = {
        "absolute": "/nonexistent",
        "relative_typo": "runs/unet_fnc",
        "folder_without_config": "empty",
        "config_without_weights": "config_only",
        "hub_id_not_on_the_hub": "someone/no-such-model",
    }[case]
    (tmp_path / "runs").mkdir()
    out = tmp_path / "space"
    assert main([str(out), "--model", model, "--push-to-hub", SPACE_ID]) == 1
    err = capsys.readouterr().err
    assert expected in err and f"--model {model}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()  # no Space folder, nothing pushed


def test_space_offline_takes_a_hub_model_from_the_cache_only(hub_model, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    assert main([str(tmp_path / "online"), "--model", hub_model]) == 0  # fills the local cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main([str(tmp_path / "cached"), "--model", hub_model]) == 0
    assert main([str(tmp_path / "uncached"), "--model", "someone/never-fetched"]) == 1
    assert "not in the local Hub cache" in capsys.readouterr().err
    assert not (tmp_path / "uncached").exists()


# ------------------------------------------------------------------------------------------
# What the Space says the model was trained on: its card, or nothing
# ------------------------------------------------------------------------------------------


def _local_checkpoint(folder: Path, card: str | None) -> Path:
    from test_demo_app import save_tiny_checkpoint

    save_tiny_checkpoint(folder)
    if card is not None:
        (folder / "README.md").write_text(card)
    return folder


def test_space_card_of_a_checkpoint_trained_on_generated_data_says_so(tmp_path):
    ckpt = _local_checkpoint(tmp_path / "demo", card_of_run(synthetic=True))
    assert main([str(tmp_path / "space"), "--model", str(ckpt)]) == 0
    readme = (tmp_path / "space" / "README.md").read_text()
    assert "trained on generated PanNuke-format data" in readme and "not a pathology model" in readme
    assert "trained on PanNuke" not in readme and "Model trained on [PanNuke]" not in readme
    assert "pannuke" not in card_header(readme)["tags"]


def test_space_card_says_nothing_about_data_without_a_model_card(tmp_path):
    ckpt = _local_checkpoint(tmp_path / "plain", None)
    assert main([str(tmp_path / "space"), "--model", str(ckpt)]) == 0
    readme = (tmp_path / "space" / "README.md").read_text()
    assert "trained on" not in readme.lower()
    assert "license" not in card_header(readme) and "## Licence" not in readme


def test_space_reads_a_private_hub_model_with_the_token_option(hub_server, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from test_demo_app import save_tiny_checkpoint

    repo = "someone/private-unet"
    folder = save_tiny_checkpoint(tmp_path / "private")
    (folder / "README.md").write_text(card_of_run(synthetic=True))
    HfApi().create_repo(repo, private=True)
    HfApi().upload_folder(folder_path=str(folder), repo_id=repo)
    monkeypatch.delenv("HF_TOKEN")  # no saved login either: HF_HOME is the fixture's
    assert main([str(tmp_path / "no_token"), "--model", repo]) == 1
    assert f"no model {repo!r} on the Hub" in capsys.readouterr().err
    assert main([str(tmp_path / "space"), "--model", repo, "--token", hub_server.token]) == 0
    readme = (tmp_path / "space" / "README.md").read_text()
    assert "trained on generated PanNuke-format data" in readme  # its card was read with the token
    assert "HF_TOKEN" not in os.environ and not _files_containing(
        tmp_path / "space", hub_server.token.encode()
    )
