"""``pannuke-hf demo``: the browser demo (Gradio) on this machine.

Example::

    python train.py                       # once: the built-in demo checkpoint in ./demo_output
    pannuke-hf demo                       # http://127.0.0.1:7860
    pannuke-hf demo --model runs/unet_fcn --port 8080

The page listens on 127.0.0.1 only and needs no network access (no share link, Gradio's analytics
and version check off). A Hub id as ``--model`` is read from the local cache when offline.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from ._common import InputError, UsageError, check_device, check_model_source, fail

DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pannuke-hf demo``."""
    p = argparse.ArgumentParser(
        prog="pannuke-hf demo",
        description="Start the browser demo: upload H&E images, see and download the nuclei.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint folder or Hub id (default: ./demo_output, written by `python train.py`)",
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port on 127.0.0.1 (default {DEFAULT_PORT})"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``pannuke-hf demo``; returns 1 when no model can be loaded, 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"pannuke-hf demo: error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    try:  # before any work: the device, and a folder that does not exist and is no Hub model
        check_device(args.device)
        if args.model is not None:
            check_model_source(args.model)
    except UsageError as err:
        return fail("pannuke-hf demo", err, 2)
    except InputError as err:
        return fail("pannuke-hf demo", err)
    from ..demo.processing import DemoModelError, load_demo_model

    # the model first: a missing checkpoint is reported without loading Gradio
    try:
        model, processor, name = load_demo_model(args.model, args.device)
    except DemoModelError as err:
        return fail("pannuke-hf demo", err)
    if importlib.util.find_spec("gradio") is None:
        print('pannuke-hf demo: error: the demo needs gradio: pip install -e ".[demo]"', file=sys.stderr)
        return 1
    from ..demo.app import build_app, launch

    app = build_app(name, model=model, processor=processor)
    print(f"PanNuke demo on http://127.0.0.1:{args.port} (Ctrl+C to stop)")
    try:
        launch(app, port=args.port)
    except OSError as err:  # port in use
        print(
            f"pannuke-hf demo: error: cannot start the server on 127.0.0.1:{args.port}: {err}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
