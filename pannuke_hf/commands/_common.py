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

from ..errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "InputError",
    "UsageError",
    "check_data_dir",
    "check_model_source",
    "error",
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


def check_model_source(name: str, option: str = "--model") -> None:
    """Check a checkpoint argument before loading: a folder holding a model, or a Hub id.

    A local folder must exist and hold ``config.json`` (what ``save_pretrained`` writes); a name
    that is no existing path and has the form of a Hub id (``name`` or ``owner/name``) is left to
    the Hub.

    Raises:
        InputError: the folder does not exist, is a file, or holds no model.
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


def void_label(value: str) -> int:
    """``argparse`` type of ``--void-label``: an integer 0-255."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer 0-255 (0 or 255), got {value!r}") from None
    if not 0 <= number <= 255:
        raise argparse.ArgumentTypeError(f"expected an integer 0-255 (0 or 255), got {number}")
    return number
