"""Downloading the fold zips from a real HTTP server on 127.0.0.1 (good and bad checksums)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import urllib.error
import urllib.request

import datasets
import numpy as np
import pytest

import pannuke_hf  # noqa: F401  (registers the builder)
from pannuke_hf.constants import DOWNLOAD_BASE_URL, FOLD_ZIP_NAMES, FOLD_ZIP_SHA256
from pannuke_hf.data.download import (
    BASE_URL_ENV,
    PanNukeChecksumError,
    PanNukeDownloadError,
    download_fold_zips,
    resolve_base_url,
)

# The official release, written out from the PanNuke download page and a public loader's pins
# (never read from the package).
OFFICIAL_BASE_URL = "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke/"
OFFICIAL_SHA256 = {
    1: "6e19ad380300e8ce9480f9ab6a14cc91fa4b6a511609b40e3d70bdf9c881ed0b",
    2: "5bc540cc509f64b5f5a274d6e5a245527dbd3e6d3155d43555115c5d54709b07",
    3: "c14d372981c42f611ebc80afad01702b89cad8c1b3089daa31931cf5a4b1a39d",
}
OFFICIAL_ZIP_NAMES = {1: "fold_1.zip", 2: "fold_2.zip", 3: "fold_3.zip"}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def zip_server(raw_zips):
    """A standard-library HTTP server on 127.0.0.1 serving the generated fold zips."""
    handler = functools.partial(_QuietHandler, directory=str(raw_zips))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def digests(raw_zips):
    return {
        k: hashlib.sha256((raw_zips / name).read_bytes()).hexdigest() for k, name in FOLD_ZIP_NAMES.items()
    }


def test_the_constants_are_the_official_release():
    assert DOWNLOAD_BASE_URL == OFFICIAL_BASE_URL
    assert FOLD_ZIP_SHA256 == OFFICIAL_SHA256
    assert FOLD_ZIP_NAMES == OFFICIAL_ZIP_NAMES


def test_base_url_resolution(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    assert resolve_base_url() == OFFICIAL_BASE_URL
    monkeypatch.setenv(BASE_URL_ENV, "http://mirror.example/pannuke")
    assert resolve_base_url() == "http://mirror.example/pannuke/"
    assert resolve_base_url("http://other/x/") == "http://other/x/"


def test_download_verifies_and_reuses(zip_server, digests, raw_zips, tmp_path):
    got = download_fold_zips(tmp_path, base_url=zip_server, sha256=digests)
    assert sorted(got) == [1, 2, 3]
    for fold, path in got.items():
        assert path.read_bytes() == (raw_zips / FOLD_ZIP_NAMES[fold]).read_bytes()
    mtime = got[1].stat().st_mtime_ns
    again = download_fold_zips(tmp_path, base_url=zip_server, sha256=digests)
    assert again == got and again[1].stat().st_mtime_ns == mtime  # verified copy reused


def test_checksum_mismatch_names_file_and_digests(zip_server, digests, tmp_path):
    wrong = dict(digests)
    wrong[2] = "0" * 64
    with pytest.raises(PanNukeChecksumError) as info:
        download_fold_zips(tmp_path, base_url=zip_server, sha256=wrong)
    message = str(info.value)
    assert "fold_2.zip" in message and "0" * 64 in message and digests[2] in message
    assert not (tmp_path / "fold_2.zip").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fold_1.zip"]  # no partial file left


@pytest.mark.parametrize("fold", [1, 2, 3])
def test_official_checksums_reject_other_content(zip_server, tmp_path, fold):
    # No sha256 given: each fold is checked against its official digest, in full.
    with pytest.raises(PanNukeChecksumError) as info:
        download_fold_zips(tmp_path, base_url=zip_server, folds=[fold])
    assert f"{OFFICIAL_ZIP_NAMES[fold]} downloaded from {zip_server}{OFFICIAL_ZIP_NAMES[fold]}" in str(
        info.value
    )
    assert f"expected {OFFICIAL_SHA256[fold]}," in str(info.value)


def test_default_download_fetches_the_official_urls(monkeypatch, tmp_path):
    """Without a base URL or $PANNUKE_BASE_URL, the official URLs are requested (offline: recorded)."""
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    requested = []

    def offline_urlopen(url, *args, **kwargs):
        requested.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("offline test")

    monkeypatch.setattr(urllib.request, "urlopen", offline_urlopen)
    for fold in (1, 2, 3):
        with pytest.raises(PanNukeDownloadError, match="offline test"):
            download_fold_zips(tmp_path, folds=[fold])
    assert requested == [OFFICIAL_BASE_URL + f"fold_{k}.zip" for k in (1, 2, 3)]
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_builder_defaults_to_the_official_checksums(zip_server, tmp_path):
    with pytest.raises(PanNukeChecksumError) as info:
        datasets.load_dataset("pannuke_hf", cache_dir=str(tmp_path / "c"), base_url=zip_server)
    assert f"expected {OFFICIAL_SHA256[1]}," in str(info.value)


def test_missing_file_on_server_names_url(zip_server, tmp_path):
    with pytest.raises(PanNukeDownloadError, match=r"http://127\.0\.0\.1:\d+/nothing/fold_1\.zip"):
        download_fold_zips(tmp_path, base_url=zip_server + "nothing/", folds=[1])


def test_builder_downloads_without_data_dir(zip_server, digests, raw_root, tmp_path, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, zip_server)
    sha = {str(k): v for k, v in digests.items()}
    ds = datasets.load_dataset("pannuke_hf", cache_dir=str(tmp_path / "c"), sha256=sha, split="fold3")
    ref = datasets.load_dataset(
        "pannuke_hf", data_dir=str(raw_root), cache_dir=str(tmp_path / "r"), split="fold3"
    )
    assert ds["id"] == ref["id"]
    for a, b in zip(ds, ref):
        np.testing.assert_array_equal(np.array(a["instance_mask"]), np.array(b["instance_mask"]))
        assert a["instance_raw_ids"] == b["instance_raw_ids"]
    assert (tmp_path / "c" / "downloads" / "pannuke_hf" / "fold_3.zip").is_file()

    monkeypatch.delenv(BASE_URL_ENV)
    bad = dict(sha, **{"1": "f" * 64})
    with pytest.raises(PanNukeChecksumError, match="fold_1.zip"):
        datasets.load_dataset("pannuke_hf", cache_dir=str(tmp_path / "d"), base_url=zip_server, sha256=bad)
