"""``pannuke-hf space``: the browser demo as a Hugging Face Space folder, optionally pushed.

Example::

    pannuke-hf space space_out --model my-user/unet-fcn-pannuke
    pannuke-hf space space_out --push-to-hub my-user/pannuke-demo      # bundles ./demo_output

``OUT`` receives:

* ``app.py`` - builds the page with :func:`pannuke_hf.demo.build_app` and launches it;
* ``requirements.txt`` - the package's requirements plus its ``demo`` extra (from ``setup.cfg`` in a
  source checkout, else from the installed package's metadata);
* ``README.md`` - the Space card: YAML header (``sdk: gradio``, ``app_file: app.py``, the model's
  licence from its card, title, emoji, ...) and a description that says what the checkpoint was
  trained on, as its model card says (nothing about the data when the card does not say);
* ``pannuke_hf/`` - a copy of this package's source, so the Space runs exactly this code;
* ``model/`` - the checkpoint, when ``--model`` is a local folder or omitted (the built-in demo
  checkpoint of ``python train.py``); a Hub id is loaded by the Space at start instead.

The model is checked before anything is written: a local folder must hold a checkpoint
(``config.json`` and weights), a Hub id must resolve on the Hub (or in the local cache when
offline); otherwise the command exits with status 1 and writes nothing, so a typo never becomes
a broken Space.

``--push-to-hub REPO`` creates the Space (``space_sdk="gradio"``) and uploads the folder with
``huggingface_hub``. The token comes from ``HF_TOKEN`` / ``hf auth login`` (or ``--token``)
and is only sent to the Hub, never written into the folder.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import InputError, check_model_source, fail

#: Checkpoint files copied into ``model/`` (no optimizer state, no intermediate checkpoints).
CHECKPOINT_FILES: tuple[str, ...] = (
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*.safetensors",
    "pytorch_model.bin",
    "*.py",
)
#: Folder of the bundled checkpoint inside the Space.
MODEL_DIR = "model"

APP_TEMPLATE = '''"""PanNuke nuclei demo (written by `pannuke-hf space`): upload H&E images, see the nuclei."""

import os

from pannuke_hf.demo import build_app, launch

MODEL = {model!r}

demo = build_app(MODEL)

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the page stays on 127.0.0.1.
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    launch(demo, port=port, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
'''


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pannuke-hf space``."""
    p = argparse.ArgumentParser(
        prog="pannuke-hf space",
        description="Write the browser demo as a Hugging Face Space folder; optionally push it.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder to write the Space into")
    p.add_argument(
        "--model",
        default=None,
        help="Hub id the Space loads, or a local checkpoint folder to bundle "
        "(default: bundle ./demo_output from `python train.py`)",
    )
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="push the folder to this Space repo")
    p.add_argument("--private", action="store_true", help="create the Space as private")
    p.add_argument("--title", default="PanNuke nuclei (UNet-FCN)", help="title on the Space card")
    p.add_argument(
        "--token",
        default=None,
        help="Hub token (default: HF_TOKEN or the saved login); never written to disk",
    )
    return p


# ---------------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------------


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def space_requirements() -> list[str]:
    """The package's requirements plus its ``demo`` extra (gradio), one specifier each.

    Read from ``setup.cfg`` beside the package when it is a source checkout, else from the
    installed distribution's metadata.
    """
    setup_cfg = _package_dir().parent / "setup.cfg"
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser()
        cfg.read(setup_cfg)
        lines = cfg.get("options", "install_requires", fallback="").splitlines()
        lines += cfg.get("options.extras_require", "demo", fallback="").splitlines()
        reqs = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    else:
        from importlib.metadata import requires

        reqs = []
        for spec in requires("pannuke-hf") or []:
            name, _, marker = spec.partition(";")
            if not marker or 'extra == "demo"' in marker:
                reqs.append(name.strip())
    if not any(r.lower().startswith("gradio") for r in reqs):
        reqs.append("gradio>=5.0")
    return list(dict.fromkeys(reqs))


def space_readme(
    title: str, model: str, hub_model: bool, training_data: Any = None, model_license: str | None = None
) -> str:
    """The Space card: YAML metadata header and a short description.

    Args:
        title: the card's title.
        model: the Hub id, or the bundled folder's name.
        hub_model: ``model`` is a Hub id (the card links it and lists it under ``models``).
        training_data: what the checkpoint was trained on
            (:func:`pannuke_hf.demo.processing.training_data_for`); None: nothing is said about data.
        model_license: the checkpoint's licence from its model card (None: none in the header,
            unless the model is trained on PanNuke: then the data licence).
    """
    from importlib.metadata import version

    import yaml

    from ..constants import CITATION, LICENSE, LICENSE_NAME, LICENSE_URL
    from ..demo.processing import MAX_PIXELS, MAX_SIDE

    pannuke = training_data is not None and training_data.pannuke
    if pannuke and model_license is None:
        model_license = LICENSE  # a model trained on PanNuke inherits the data licence

    header = {
        "title": title,
        "emoji": "🔬",
        "colorFrom": "pink",
        "colorTo": "purple",
        "sdk": "gradio",
        "sdk_version": version("gradio"),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py",
        "pinned": False,
        "license": model_license,
        "short_description": "Nuclei in H&E: outlines and PanNuke's five classes",
        "tags": ["pathology", "histology", "nuclei", "segmentation"],
    }
    if model_license is None:
        del header["license"]
    if pannuke:
        header["tags"].append("pannuke")
    if hub_model:
        header["models"] = [model]
    side = int(MAX_PIXELS**0.5)
    trained_line = f"\n- {training_data.markdown()}" if training_data is not None else ""
    if pannuke:
        licence_section = (
            f"\n## Licence\n\nThe model is trained on PanNuke, whose data are licensed "
            f"[{LICENSE_NAME}]({LICENSE_URL}) (attribution, non-commercial, share-alike); this Space "
            "inherits that licence.\n"
        )
    elif model_license is not None:
        licence_section = f"\n## Licence\n\nThe model's card gives its licence as `{model_license}`.\n"
    else:
        licence_section = ""
    model_line = (
        f"[`{model}`](https://huggingface.co/{model})" if hub_model else f"the checkpoint in `{MODEL_DIR}/`"
    )
    body = f"""
# {title}

Upload H&E images (PNG, JPEG or TIFF) and see every pixel labelled as background or one of the
five PanNuke nucleus classes (neoplastic, inflammatory, connective / soft tissue, dead,
non-neoplastic epithelial), with nucleus outlines, a table of nucleus counts and areas per class,
and downloads of the label map, the per-nucleus CSV and a GeoJSON for QuPath.

- Model: {model_line}, a UNet-FCN that works at 40x (0.25 µm per pixel); choose
  20x for images scanned at 0.5 µm per pixel.{trained_line}
- Images up to {side:,} x {side:,} pixels (sides up to {MAX_SIDE:,}) are accepted; larger ones
  are refused with a message (use `pannuke-hf predict` for larger images, `pannuke-hf slide` for
  whole slides).
- A research demo, not a diagnostic tool.
{licence_section}
## Citation

The five nucleus classes are those of PanNuke:

```bibtex
{CITATION.strip()}
```
"""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


def _copy_package(target: Path) -> None:
    """Copy this package's source (no caches) to ``target``."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(_package_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def _copy_checkpoint(source: Path, target: Path) -> list[Path]:
    """Copy the inference files of a checkpoint folder; returns what was copied."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    copied = []
    for pattern in CHECKPOINT_FILES:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied.append(target / path.name)
    return copied


@contextlib.contextmanager
def _hub_token(token: str | None) -> Iterator[None]:
    """Use ``token`` for the Hub reads inside (huggingface_hub reads ``HF_TOKEN`` at every call),
    so that ``--token`` also opens a private model; the environment is restored afterwards."""
    if token is None:
        yield
        return
    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if saved is None:
            del os.environ["HF_TOKEN"]
        else:
            os.environ["HF_TOKEN"] = saved


def check_space_model(model: str) -> Path | None:
    """Check ``--model`` before anything is written; returns the checkpoint folder (None: a Hub id).

    Raises:
        InputError: a folder that does not exist, holds no ``config.json`` or no weights, or a name
            that is no folder and no Hub model that resolves (see
            :func:`pannuke_hf.commands._common.check_model_source`).
    """
    from ..demo.processing import is_checkpoint

    check_model_source(model)
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None  # a Hub id that resolves
    if not is_checkpoint(folder):
        raise InputError(
            f"--model {model}: the folder holds no weights (model.safetensors or pytorch_model.bin); "
            "give a folder written by `save_pretrained`"
        )
    return folder


def write_space(
    out: Path, model: str | None, title: str = "PanNuke nuclei (UNet-FCN)", token: str | None = None
) -> Path:
    """Write the Space folder (see the module docstring); returns ``out``.

    The model is checked first (:func:`check_space_model`): nothing is written for a model that
    does not exist. ``token`` (default: ``HF_TOKEN`` or the saved login) reads a Hub model and
    its card; it is never written.

    Raises:
        FileNotFoundError: no ``model`` and no demo checkpoint (the message says how to get one).
        InputError: ``model`` is no checkpoint folder and no Hub model that resolves.
    """
    from huggingface_hub import ModelCard

    from ..demo.processing import DEMO_CHECKPOINT_DIR, find_demo_checkpoint, model_card_text
    from ..training.model_card import training_data_from_card

    local: Path | None
    if model is None:
        local = find_demo_checkpoint()
        if local is None:
            raise FileNotFoundError(
                f"no --model given and no demo checkpoint in ./{DEMO_CHECKPOINT_DIR}: train one with "
                "`python train.py`, or pass --model HUB_ID (or a checkpoint folder)"
            )
    else:
        with _hub_token(token):
            local = check_space_model(model)
    with _hub_token(token):
        card = model_card_text(local if local is not None else str(model))
    training_data = training_data_from_card(card) if card else None
    model_license = ModelCard(card, ignore_metadata_errors=True).data.license if card else None
    out.mkdir(parents=True, exist_ok=True)
    if local is not None:
        _copy_checkpoint(local, out / MODEL_DIR)
        app_model = MODEL_DIR
    else:
        app_model = str(model)
    (out / "app.py").write_text(APP_TEMPLATE.format(model=app_model), encoding="utf-8")
    (out / "requirements.txt").write_text("\n".join(space_requirements()) + "\n", encoding="utf-8")
    readme = space_readme(
        title, app_model, local is None, training_data=training_data, model_license=model_license
    )
    (out / "README.md").write_text(readme, encoding="utf-8")
    _copy_package(out / "pannuke_hf")
    return out


def push_space(out: Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Create the Space repository (gradio SDK) if needed and upload ``out``; returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(out),
        repo_id=repo_id,
        repo_type="space",
        commit_message="Upload the PanNuke demo (pannuke-hf space)",
        ignore_patterns=["**/__pycache__/**", "*.pyc"],
    )
    return str(url)


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf space``; returns 0 on success, 1 on a model that does not exist (nothing is
    written) or a failed push."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:  # a usage error: nothing is checked or written
        parser.error("--private needs --push-to-hub (it sets the visibility of the pushed Space)")
    if importlib.util.find_spec("gradio") is None:  # its version goes into the card
        return fail("pannuke-hf space", InputError('writing a Space needs gradio: pip install -e ".[demo]"'))
    try:
        out = write_space(args.out, args.model, args.title, token=args.token)
    except (FileNotFoundError, InputError) as err:
        return fail("pannuke-hf space", err)
    print(f"Space written to {out}")
    if args.push_to_hub:
        try:
            url = push_space(out, args.push_to_hub, private=args.private, token=args.token)
        except Exception as err:  # noqa: BLE001 - HTTP, auth and network errors of huggingface_hub
            return fail(
                "pannuke-hf space", OSError(f"pushing to the Space {args.push_to_hub!r} failed: {err}")
            )
        print(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
