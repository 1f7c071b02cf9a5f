"""The ``pannuke-hf`` command: a thin dispatcher to one module per sub-command.

Each sub-command lives in ``pannuke_hf/commands/<name>.py`` and exposes
``main(argv: list[str] | None) -> int``. Modules are imported only when their command runs,
so ``pannuke-hf --help`` stays fast. Exit codes: see :mod:`pannuke_hf.errors`.

Errors are handled here once for every command: a :class:`~pannuke_hf.errors.UsageError` is exit
code 2, an :class:`~pannuke_hf.commands._common.InputError` or another expected failure of the
work (``ValueError``, ``OSError``, ``KeyError``) exit code 1, each printed as one line naming the
command, or re-raised with its traceback when ``PANNUKE_HF_TRACEBACK=1``.
"""

from __future__ import annotations

import importlib
import os
import sys

from .errors import EXIT_FAILURE, EXIT_USAGE, UsageError

#: command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": (
        "pannuke_hf.commands.make_synthetic",
        "write generated folds in the raw PanNuke format",
    ),
    "prepare": ("pannuke_hf.commands.prepare", "download (optional) and build the Arrow dataset"),
    "stats": ("pannuke_hf.commands.stats", "class-statistics table of a split, as Markdown"),
    "export": ("pannuke_hf.commands.export", "Parquet shards + dataset card; optionally push to the Hub"),
    "convert-mmseg": ("pannuke_hf.commands.convert_mmseg", "convert an mmsegmentation UNet-FCN checkpoint"),
    "train": ("pannuke_hf.commands.train", "train a UNet-FCN (same as `accelerate launch train.py`)"),
    "evaluate": ("pannuke_hf.commands.evaluate", "score a checkpoint on a split; table + JSON"),
    "predict": ("pannuke_hf.commands.predict", "predict label maps and overlays for image files"),
    "slide": ("pannuke_hf.commands.slide", "every nucleus of whole-slide images: GeoJSON, Parquet, summary"),
    "make-synthetic-slide": (
        "pannuke_hf.commands.make_synthetic_slide",
        "write a generated pyramidal slide (OpenSlide opens it) and its true nuclei",
    ),
    "score": (
        "pannuke_hf.commands.score",
        "official nucleus PQ / mPQ / bPQ / F1 of release-format predictions",
    ),
    "protocol": ("pannuke_hf.commands.protocol", "the 3-fold protocol: train/evaluate 3 rows, mean and std"),
    "demo": ("pannuke_hf.commands.demo", "browser demo (Gradio) on 127.0.0.1: upload images, see nuclei"),
    "space": ("pannuke_hf.commands.space", "write (and push) the browser demo as a Hugging Face Space"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: pannuke-hf COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "Run `pannuke-hf COMMAND --help` for the arguments of a command.",
        "Exit codes: 0 success, 1 the work failed (data, model, missing input files, Hub), "
        "2 the command line cannot be used.",
        "Errors are one line; PANNUKE_HF_TRACEBACK=1 shows the Python traceback instead.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pannuke-hf`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"pannuke-hf: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    from .commands._common import InputError, fail

    prog = f"pannuke-hf {name}"
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing to report
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python would flush the broken pipe at exit
        return EXIT_FAILURE
    except UsageError as err:
        return fail(prog, err, EXIT_USAGE)
    except (InputError, ValueError, OSError, KeyError) as err:
        # the work failed in an expected way (data, model, files, network): one line, exit 1
        return fail(prog, err, EXIT_FAILURE)


if __name__ == "__main__":
    sys.exit(main())
