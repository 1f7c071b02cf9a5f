"""Exit codes of ``pannuke-hf`` and ``train.py``, and the error type for a command line that cannot be used.

* ``0`` (:data:`EXIT_OK`): success.
* ``1`` (:data:`EXIT_FAILURE`): the command line was understood but the work failed: data or
  model missing, unreadable or unsuitable (a data folder that does not exist, a checkpoint with
  another label count, a corrupt fold file), input images that cannot be decoded, the Hub
  refusing an upload.
* ``2`` (:data:`EXIT_USAGE`): the command line cannot be used: an unknown command, option or
  configuration key, a missing or invalid value, options that do not go together (argparse's own
  code for these). Nothing was done.
"""

from __future__ import annotations

import os

#: Success.
EXIT_OK: int = 0
#: The command ran and failed (data, model, input files, network).
EXIT_FAILURE: int = 1
#: The command line cannot be used as given.
EXIT_USAGE: int = 2


class UsageError(ValueError):
    """A command line (or configuration file) that cannot be used; exit code :data:`EXIT_USAGE`."""


#: Environment variable that turns a command's one-line error back into the Python traceback.
TRACEBACK_ENV: str = "PANNUKE_HF_TRACEBACK"


def traceback_requested() -> bool:
    """Whether ``PANNUKE_HF_TRACEBACK`` asks for tracebacks (set, and not ``0`` / ``false`` / ``no`` / ``off``)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


#: Top-level packages whose exceptions mean "the Hub or the network failed" (HTTP clients and
#: ``huggingface_hub``; their errors are not ``OSError``s, and their client library changes).
_HUB_ERROR_PACKAGES: frozenset[str] = frozenset(
    {"huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}
)


def is_hub_error(error: BaseException) -> bool:
    """Whether ``error`` comes from the Hub client or its HTTP library (refused token, no network, ...).

    Such a failure is reported as one line with exit code 1, like a missing file.
    """
    return any(
        cls.__module__.split(".")[0] in _HUB_ERROR_PACKAGES
        for cls in type(error).__mro__
        if cls is not object
    )
