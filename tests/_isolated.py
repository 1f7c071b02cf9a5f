"""Run a Python script in a fresh interpreter that cannot import ``pannuke_hf``.

Checkpoints and Hub repositories must load with ``trust_remote_code`` where the package is not
installed. ``python -I -S`` skips the site hooks, so neither the editable install's ``.pth``
finder nor the working directory is on ``sys.path``; the preamble appends the bare site-packages
folder (appending does not run ``.pth`` files), checks that ``pannuke_hf`` cannot be found, and
installs an import hook that makes any ``pannuke_hf`` import fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

PREAMBLE = textwrap.dedent(
    """
    import importlib.abc, importlib.util, os, sys

    sys.path.append(os.environ["SITE_PACKAGES"])
    if importlib.util.find_spec("pannuke_hf") is not None:
        raise SystemExit("pannuke_hf is importable in the remote-code process")


    class _NoPannukeHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "pannuke_hf":
                raise ImportError("pannuke_hf is blocked in this process: " + name)
            return None


    sys.meta_path.insert(0, _NoPannukeHf())
    """
)


def run_without_pannuke_hf(
    script: str,
    work_dir: Path,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """Run ``PREAMBLE + script`` (dedented) with ``args`` in ``work_dir``; returns the finished process.

    The environment is minimal (offline Hub, a private ``HOME`` and ``HF_HOME`` under ``work_dir``,
    one thread); ``env`` adds or overrides variables.
    """
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work_dir),
        "HF_HOME": str(Path(work_dir) / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "SITE_PACKAGES": sysconfig.get_paths()["purelib"],
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", PREAMBLE + textwrap.dedent(script), *args],
        env=full_env,
        cwd=work_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
