"""``pannuke-hf train [config.yaml|json] [--flags]``: the same as ``python train.py``."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Train a UNet-FCN; see ``pannuke-hf train --help``. Returns the exit status."""
    from ..training.run import main as run_main

    return run_main(argv)
