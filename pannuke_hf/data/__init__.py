"""PanNuke data: raw folds -> ``datasets`` builder (``PanNuke``), download, splits, statistics.

``PanNuke``, ``PanNukeConfig`` and ``PanNukeDataError`` are importable from here; they load
lazily so that ``import pannuke_hf`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "PanNuke": "pannuke_hf.data.builder",
    "PanNukeConfig": "pannuke_hf.data.builder",
    "pannuke_features": "pannuke_hf.data.builder",
    "PanNukeDataError": "pannuke_hf.data.raw",
    "download_fold_zips": "pannuke_hf.data.download",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
