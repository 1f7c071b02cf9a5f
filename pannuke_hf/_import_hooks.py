"""Post-import hooks: run a function once a given module has been imported, whenever that happens.

``import pannuke_hf`` must stay light (no torch, no transformers, no datasets), yet
``load_dataset("pannuke_hf", ...)`` and ``AutoModel.from_pretrained(...)`` must find the package's
builder and model. So registration waits for the library concerned: :func:`when_imported`
calls a function with the module right after the module has been executed, or at once when it was
imported already. Nothing is imported before the user imports it.

The hook is a ``sys.meta_path`` finder that answers only for the watched names: it lets the other
finders locate the module, then wraps the loader so that the callbacks run after the module's
code. The module's own loader is put back afterwards. A failing callback becomes a warning, never a
failed import of somebody else's library.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

#: module name -> callbacks still to run for it.
_PENDING: dict[str, list[Callable[[ModuleType], None]]] = {}
_LOCK = threading.RLock()


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once the module ``name`` is imported (at once if it already is).

    Args:
        name: full dotted module name, e.g. ``"transformers.models.auto.modeling_auto"``.
        callback: called with the module object (the ``sys.modules`` entry) after the module's
            code has run. Exceptions it raises are turned into a ``RuntimeWarning``.
    """
    module = sys.modules.get(name)
    if module is not None and not _initializing(module):
        _run(name, module, [callback])
        return
    with _LOCK:
        _PENDING.setdefault(name, []).append(callback)
        if not any(isinstance(finder, _PostImportFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _PostImportFinder())


def _initializing(module: ModuleType) -> bool:
    """Whether ``module`` is still executing (found in ``sys.modules`` during its own import)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _run(name: str, module: ModuleType, callbacks: list[Callable[[ModuleType], None]]) -> None:
    for callback in callbacks:
        try:
            callback(module)
        except Exception as error:  # noqa: BLE001 - a hook must not break the user's import
            warnings.warn(
                f"pannuke_hf: {getattr(callback, '__qualname__', callback)} after importing {name} "
                f"failed: {error!r}",
                RuntimeWarning,
                stacklevel=2,
            )


class _PostImportFinder:
    """``sys.meta_path`` finder that wraps the loader of watched modules (see the module docstring)."""

    def __init__(self) -> None:
        self._searching: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        """Return the spec the other finders give, with a loader that runs the callbacks after it."""
        if fullname not in _PENDING or fullname in self._searching:
            return None
        self._searching.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # asks every finder; this one steps aside
        finally:
            self._searching.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _CallbackLoader(spec.loader, fullname)
        return spec

    def invalidate_caches(self) -> None:
        """Nothing cached."""


class _CallbackLoader:
    """Delegates to the real loader; after ``exec_module`` runs the pending callbacks of the module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Give the module its own loader back before its code runs (resource readers, linecache).
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        # Callbacks may add callbacks for this module (the import system still counts it as
        # initializing until this method returns): run until none is left.
        while True:
            with _LOCK:
                callbacks = _PENDING.pop(self._name, [])
            if not callbacks:
                break
            # Packages may replace themselves in sys.modules (transformers' lazy modules do).
            _run(self._name, sys.modules.get(self._name, module), callbacks)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._loader, attribute)
