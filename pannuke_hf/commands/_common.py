"""What the ``pannuke-hf`` commands share: error lines and early checks of paths.

Exit codes follow :mod:`pannuke_hf.errors` (0 success, 1 the work failed, 2 the command line
cannot be used). The checks here run before any heavy import, so that a wrong path is reported at
once, in the words of the command's own options.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, TRACEBACK_ENV, UsageError, traceback_requested

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "TRACEBACK_ENV",
    "InputError",
    "UsageError",
    "check_data_dir",
    "check_device",
    "check_input_file",
    "check_model_source",
    "error",
    "fail",
    "read_model_config",
    "traceback_requested",
    "void_label",
]

#: What a Hub repository id looks like: ``name`` or ``owner/name``.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

#: The files a raw-folds folder holds, for messages.
FOLDS_HINT: str = "'Fold 1'..'Fold 3' folders or fold_1.zip..fold_3.zip"


class InputError(Exception):
    """A data or model path that names nothing usable (exit code 1); the message names the option."""


def error(prog: str, message: object) -> None:
    """Print ``PROG: error: MESSAGE`` to stderr (argparse's style)."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def fail(prog: str, err: BaseException | str, code: int = EXIT_FAILURE) -> int:
    """Report ``err`` as one line and return ``code``; re-raise it when ``PANNUKE_HF_TRACEBACK`` is set.

    Every command reports its expected failures through this function (or lets them reach
    :func:`pannuke_hf.cli.main`, which does the same), so the variable works everywhere. A plain
    message is raised as :class:`UsageError` (code 2) or :class:`InputError` (otherwise).
    """
    if traceback_requested():
        if isinstance(err, BaseException):
            raise err
        raise (UsageError if code == EXIT_USAGE else InputError)(err)
    error(prog, err)
    return code


def check_data_dir(path: str | None, option: str = "--data-dir") -> None:
    """Check that a raw-folds folder exists (``None``, i.e. option not given, passes).

    Raises:
        InputError: ``path`` does not exist or is not a folder.
    """
    if path is None:
        return
    folder = Path(path).expanduser()
    if not folder.exists():
        raise InputError(
            f"{option} {path}: no such folder; give the folder holding {FOLDS_HINT} "
            "(`pannuke-hf make-synthetic OUT` writes generated ones)"
        )
    if not folder.is_dir():
        raise InputError(f"{option} {path}: not a folder; give the folder holding {FOLDS_HINT}")


def check_input_file(path: str | None, option: str, what: str = "file") -> None:
    """Check that an input file exists (``None`` passes); a missing input is exit code 1.

    Raises:
        InputError: ``path`` does not exist or is a folder.
    """
    if path is None:
        return
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError(f"{option} {path}: no such {what}")
    if target.is_dir():
        raise InputError(f"{option} {path}: a folder, expected a {what}")


def check_model_source(name: str, option: str = "--model", resolve_hub: bool = True) -> None:
    """Check a checkpoint argument before any work: a folder holding a model, or a Hub model.

    * A local folder must exist and hold ``config.json`` (what ``save_pretrained`` writes).
    * A name that is no existing path is "no such folder" unless it has the form of a Hub id
      (``name`` or ``owner/name``) and is no mistyped local path: when the first part of
      ``owner/name`` is a local folder (``runs/row1`` with ``runs/`` here), the user meant that
      folder.
    * With ``resolve_hub`` a Hub id must resolve: its ``config.json`` is fetched (or found in the
      local Hub cache, which is all there is with ``HF_HUB_OFFLINE=1`` or without network).

    Raises:
        InputError: the folder does not exist, is a file, holds no model, or the Hub id does not
            resolve (exit code 1).
    """
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(
                f"{option} {name}: the folder holds no model (no config.json); give a folder written by "
                "`save_pretrained` or a training run's output_dir, or a Hub model id"
            )
        return
    if path.exists():
        raise InputError(f"{option} {name}: not a folder; give a checkpoint folder or a Hub model id")
    if not _REPO_ID.match(name) or ".." in name or "--" in name:
        raise InputError(f"{option} {name}: no such folder")
    parent = name.split("/")[0]
    if "/" in name and Path(parent).is_dir():
        raise InputError(
            f"{option} {name}: no such folder (the folder {parent}/ exists but holds no "
            f"{name.split('/', 1)[1]!r})"
        )
    if resolve_hub:
        _resolve_hub_model(name, option)


def read_model_config(name: str) -> dict | None:
    """A checkpoint's ``config.json`` as a dict (a local folder, or a Hub id already in the cache).

    Call after :func:`check_model_source`; returns None when the file cannot be read (the model
    loader then reports the problem).
    """
    import json

    path = Path(name).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            config_path = Path(hf_hub_download(name, "config.json"))
        except Exception:  # noqa: BLE001 - any failure: let the model loader report it
            return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _resolve_hub_model(repo_id: str, option: str) -> None:
    """Fetch (or find in the cache) a Hub model's ``config.json``; :class:`InputError` when it fails."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        hf_hub_download(repo_id, "config.json")
    except LocalEntryNotFoundError:
        raise InputError(
            f"{option} {repo_id}: no such folder, and the Hub model {repo_id!r} is not in the local Hub "
            "cache while the Hub cannot be reached (offline or no network)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(f"{option} {repo_id}: no such folder, and no model {repo_id!r} on the Hub") from None
    except EntryNotFoundError:
        raise InputError(
            f"{option} {repo_id}: the Hub repository holds no config.json (not a transformers model)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise InputError(f"{option} {repo_id}: no such folder, and the Hub refused it: {err}") from None


def check_device(value: str | None, option: str = "--device") -> None:
    """Check that a ``--device`` value names a device this machine has, before any data is built.

    ``None`` (the command's default) passes. Imports torch (only when a device is named).

    Raises:
        UsageError: an unknown device type, a CUDA / MPS device on a machine without it, or a CUDA
            index beyond the GPUs present (exit code 2).
    """
    if value is None:
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {value}: not a device (use cpu, cuda, cuda:1, mps ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"{option} {value}: this machine has no CUDA GPU (torch {torch.__version__}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(
                f"{option} {value}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})"
            )
    elif device.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise UsageError(f"{option} {value}: this machine has no MPS device; use --device cpu")


def void_label(value: str) -> int:
    """``argparse`` type of ``--void-label``: 0 (background, as the reference) or 255 (ignored)."""
    from ..constants import VOID_LABELS

    try:
        number = int(value)
    except ValueError:
        number = None
    if number not in VOID_LABELS:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(map(str, VOID_LABELS))} (0: void pixels are background, as the reference; "
            f"255: losses and metrics ignore them), got {value!r}"
        )
    return number
