"""Pytest fixture ``hub_server``: a fake Hugging Face Hub on 127.0.0.1 for the test's duration.

The fixture starts :class:`hub_server.HubServer` in a thread, points every Hugging Face library of
this process at it, and sets the environment so that subprocesses go there too:

* ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE=0``, ``HF_DATASETS_OFFLINE=0``,
  ``HF_HUB_DISABLE_XET=1`` in ``os.environ`` (inherited by subprocesses);
* the module-level copies read at import time: ``huggingface_hub.constants.ENDPOINT`` (and the
  resolve-URL template, the trusted hosts, the offline and Xet switches) and ``datasets.config``
  (``HF_ENDPOINT``, ``HUB_DATASETS_URL``, offline flags);
* ``HF_HOME`` / ``HF_HUB_CACHE`` in a temporary folder so no real cache or saved token is used.
"""

from __future__ import annotations

import sys

import pytest
from hub_server import HubServer

__all__ = ["hub_server"]


def _point_libraries_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, token: str, cache_dir: str) -> None:
    from urllib.parse import urlsplit

    env = {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_CACHE": f"{cache_dir}/hub",
        "HF_HOME": f"{cache_dir}/home",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", f"{cache_dir}/hub")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # `huggingface_hub.upload_file` & co. are methods of one HfApi made at import time.
    import huggingface_hub.hf_api

    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(
        datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    )
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False, raising=False)

    # transformers and evaluate read the environment when first imported; patch only the copies
    # already made (importing transformers here would slow down every test using the fixture).
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None:
        # one shared, lazily made HfApi whose endpoint is fixed at creation: make a fresh one
        monkeypatch.setattr(transformers_hub, "_hf_api", None, raising=False)
        for name in ("HF_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE"):
            if hasattr(transformers_hub, name):
                monkeypatch.setattr(transformers_hub, name, f"{cache_dir}/hub")
    evaluate_config = sys.modules.get("evaluate.config")
    if evaluate_config is not None:
        monkeypatch.setattr(evaluate_config, "HF_ENDPOINT", endpoint)
        monkeypatch.setattr(evaluate_config, "HF_LIST_ENDPOINT", endpoint + "/api/spaces?filter={type}")
        monkeypatch.setattr(
            evaluate_config, "HUB_EVALUATE_URL", endpoint + "/spaces/{path}/resolve/{revision}/{name}"
        )


def _clear_fsspec_cache() -> None:
    """Forget cached ``HfFileSystem`` instances (and their directory listings) of other tests."""
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()


@pytest.fixture
def hub_server(tmp_path_factory, monkeypatch):
    """A fake Hub serving from a temporary folder, with the HF libraries pointed at it.

    Yields the :class:`hub_server.HubServer`: ``.endpoint`` (URL), ``.token`` (what the client
    sends, also in ``HF_TOKEN``), ``.root`` (storage folder; ``.repo_dir(repo_id, type)`` holds the
    pushed files of branch main) and ``.requests`` (method, path, Authorization of each request).
    """
    root = tmp_path_factory.mktemp("fake_hub")
    cache = tmp_path_factory.mktemp("hf_client_cache")
    server = HubServer(root / "storage").start()
    _point_libraries_at(monkeypatch, server.endpoint, server.token, str(cache))
    _clear_fsspec_cache()
    try:
        yield server
    finally:
        _clear_fsspec_cache()
        server.stop()
