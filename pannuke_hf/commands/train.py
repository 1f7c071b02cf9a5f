"""``pannuke-hf train [config.yaml|json] [--flags]``: the same as ``python train.py``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Train a UNet-FCN; see ``pannuke-hf train --help``. Returns the exit status (0, 1 or 2)."""
    from ..training.run import main as run_main

    # argparse (HfArgumentParser) and the error lines name the program after sys.argv[0].
    saved = sys.argv[0] if sys.argv else None
    if sys.argv:
        sys.argv[0] = "pannuke-hf train"
    else:
        sys.argv.append("pannuke-hf train")
    try:
        return run_main(argv)
    finally:
        if saved is None:
            sys.argv.clear()
        else:
            sys.argv[0] = saved
