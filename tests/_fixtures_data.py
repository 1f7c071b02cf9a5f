"""Generated raw PanNuke data for the tests (session-scoped: built once per test run).

Both fixtures hold the same generated release (seed :data:`RAW_SEED`, fold sizes
:data:`RAW_FOLD_SIZES`). Every fold carries every quirk at the indices of
``pannuke_hf.data.synthetic.QUIRK_PATCHES``: 0 all five classes, 1 empty (no nucleus),
2 void (all six channels 0), 3 overlap (pixels in two class channels), 4 split id (one
neoplastic id in two disconnected pieces). Every nucleated patch holds ids above 255 and
multiples of 256.
"""

from __future__ import annotations

import pathlib

import pytest

from pannuke_hf.data.synthetic import QUIRK_PATCHES, make_synthetic_folds

__all__ = ["RAW_FOLD_SIZES", "RAW_SEED", "QUIRK_PATCHES", "raw_root", "raw_zips", "raw_fold_sizes"]

#: Patches per fold of the generated test release (different sizes catch fold mix-ups).
RAW_FOLD_SIZES: dict[int, int] = {1: 6, 2: 5, 3: 5}
RAW_SEED: int = 0


@pytest.fixture(scope="session")
def raw_fold_sizes() -> dict[int, int]:
    """Patches per fold of ``raw_root`` / ``raw_zips``: ``{1: 6, 2: 5, 3: 5}``."""
    return dict(RAW_FOLD_SIZES)


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> pathlib.Path:
    """Folder holding ``Fold 1``, ``Fold 2``, ``Fold 3`` in the raw layout (read-only use)."""
    return make_synthetic_folds(tmp_path_factory.mktemp("raw_root"), RAW_FOLD_SIZES, seed=RAW_SEED)


@pytest.fixture(scope="session")
def raw_zips(tmp_path_factory) -> pathlib.Path:
    """Folder holding ``fold_1.zip``, ``fold_2.zip``, ``fold_3.zip`` (same data as ``raw_root``)."""
    return make_synthetic_folds(
        tmp_path_factory.mktemp("raw_zips"), RAW_FOLD_SIZES, seed=RAW_SEED, as_zip=True
    )
