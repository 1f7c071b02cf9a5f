"""`pannuke-hf space`: a ready-to-push Space folder, pushed to a (local, fake) Hub without leaking the token."""

from __future__ import annotations

import configparser
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


@pytest.fixture
def no_demo_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(processing, "checkpoint_search_paths", lambda: [tmp_path / "nothing_here"])


def test_space_folder_for_a_hub_model(tmp_path, capsys):
    out = tmp_path / "space"
    assert main([str(out), "--model", "someone/unet-fcn-pannuke"]) == 0
    header = card_header((out / "README.md").read_text())
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py"
    assert (out / header["app_file"]).is_file()
    assert header["license"] == "cc-by-nc-sa-4.0"  # the PanNuke data licence
    assert header["models"] == ["someone/unet-fcn-pannuke"]
    assert header["title"] and header["emoji"]
    assert 0 < len(header["short_description"]) <= 60  # the Hub refuses longer ones
    from importlib.metadata import version

    assert header["sdk_version"] == version("gradio")
    readme = (out / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "gamper2020pannuke" in readme
    assert "'someone/unet-fcn-pannuke'" in (out / "app.py").read_text()
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
def test_push_to_hub_creates_a_gradio_space_without_writing_the_token(hub_server, tmp_path, capsys, private):
    out = tmp_path / "space"
    argv = [str(out), "--model", "someone/unet-fcn-pannuke", "--push-to-hub", SPACE_ID]
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


def test_push_failure_is_a_message(hub_server, tmp_path, capsys):
    out = tmp_path / "space"
    assert main([str(out), "--model", "someone/m", "--push-to-hub", SPACE_ID, "--token", "hf_wrong"]) == 1
    err = capsys.readouterr().err
    assert f"pushing to the Space {SPACE_ID!r} failed" in err and "Traceback" not in err
    assert ("space", SPACE_ID) not in hub_server.repos
