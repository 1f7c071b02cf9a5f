"""Make ``datasets.load_dataset("pannuke_hf", ...)`` resolve to :class:`pannuke_hf.data.builder.PanNuke`.

``datasets`` (>= 4) has no loading scripts. ``load_dataset(name)`` first looks ``name`` up in the
private dict ``datasets.packaged_modules._PACKAGED_DATASETS_MODULES`` (name -> (module path,
hash)); an entry there resolves to the builder class of that module, with ``num_proc`` and
``streaming`` working. For packaged names ``datasets`` would also scan ``data_dir`` (or the
current directory!) for data files; for ``pannuke_hf`` that scan is skipped, the builder finds
its folds itself. Both hooks touch private API; ``tests/test_builder.py`` pins their behaviour.

Importing ``pannuke_hf`` runs :func:`register` as soon as ``datasets.load`` is imported (at once when
it already is), so that ``import pannuke_hf`` itself does not import ``datasets``.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from types import ModuleType

#: Name under which ``load_dataset`` finds the builder.
DATASET_NAME: str = "pannuke_hf"
BUILDER_MODULE: str = "pannuke_hf.data.builder"

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Sources whose content decides what a build produces; any edit gives a fresh cache entry.
BUILD_SOURCES: tuple[Path, ...] = (
    _PACKAGE_DIR / "constants.py",
    _PACKAGE_DIR / "data" / "raw.py",
    _PACKAGE_DIR / "data" / "builder.py",
    _PACKAGE_DIR / "data" / "download.py",
)


def build_code_hash(sources: tuple[Path, ...] | None = None) -> str:
    """SHA-256 (hex) of the builder's source files (``BUILD_SOURCES`` by default)."""
    digest = hashlib.sha256()
    for path in BUILD_SOURCES if sources is None else sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _patch_packaged_factory() -> None:
    """Skip the data-file scan of ``PackagedDatasetModuleFactory`` for ``pannuke_hf`` only."""
    from datasets.data_files import DataFilesDict

    # Not `from datasets import load`: this runs right after datasets.load is imported, while the
    # `datasets` package itself may still be importing.
    hf_load = importlib.import_module("datasets.load")

    factory = hf_load.PackagedDatasetModuleFactory
    if getattr(factory.get_module, "_pannuke_hf_patched", False):
        return
    original = factory.get_module

    def get_module(self):  # noqa: ANN001, ANN202 - same signature as the method it wraps
        if self.name != DATASET_NAME:
            return original(self)
        if self.data_files is not None:
            raise ValueError(
                f"{DATASET_NAME!r} reads the raw folds from data_dir=...; data_files is not supported"
            )
        module_path, module_hash = hf_load._PACKAGED_DATASETS_MODULES[self.name]
        # An empty (not None) DataFilesDict: load_dataset refuses packaged builders without data files.
        builder_kwargs = {"dataset_name": DATASET_NAME, "data_files": DataFilesDict()}
        return hf_load.DatasetModule(module_path, module_hash, builder_kwargs)

    get_module._pannuke_hf_patched = True
    factory.get_module = get_module


def register() -> None:
    """Register the PanNuke builder with ``datasets`` (idempotent)."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    _PACKAGED_DATASETS_MODULES[DATASET_NAME] = (BUILDER_MODULE, build_code_hash())
    _patch_packaged_factory()


def register_with_datasets(_module: ModuleType | None = None) -> None:
    """Post-import hook for ``datasets.load`` (see ``pannuke_hf.__init__``): :func:`register`."""
    register()
