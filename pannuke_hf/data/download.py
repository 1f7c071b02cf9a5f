"""Downloading the three official PanNuke zips, with SHA-256 verification.

The base URL defaults to ``constants.DOWNLOAD_BASE_URL`` and can be overridden (mirrors, tests)
by an argument or the ``PANNUKE_BASE_URL`` environment variable. A downloaded file is written
to a temporary name and renamed only once its digest matches, so a broken or tampered download
never sits in the cache under the final name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..constants import DOWNLOAD_BASE_URL, FOLD_ZIP_NAMES, FOLD_ZIP_SHA256, FOLDS
from .raw import PanNukeDataError

logger = logging.getLogger(__name__)

#: Environment variable overriding the download base URL.
BASE_URL_ENV: str = "PANNUKE_BASE_URL"
_CHUNK = 1 << 20


class PanNukeDownloadError(PanNukeDataError):
    """A fold zip could not be downloaded."""


class PanNukeChecksumError(PanNukeDataError):
    """A downloaded fold zip does not have the expected SHA-256 digest."""


def resolve_base_url(base_url: str | None = None) -> str:
    """The base URL to download from: the argument, else ``$PANNUKE_BASE_URL``, else the official one."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DOWNLOAD_BASE_URL
    return url if url.endswith("/") else url + "/"


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest``; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as err:
        raise PanNukeDownloadError(f"could not download {url}: {err}") from err
    return digest.hexdigest()


def download_fold_zips(
    dest_dir: str | os.PathLike,
    base_url: str | None = None,
    sha256: Mapping[int, str] | None = None,
    folds: Iterable[int] = FOLDS,
    timeout: float = 60.0,
) -> dict[int, Path]:
    """Download ``fold_k.zip`` for each fold into ``dest_dir`` and verify its SHA-256.

    A zip already in ``dest_dir`` with the expected digest is reused.

    Args:
        dest_dir: folder receiving the zips.
        base_url: where ``fold_1.zip`` ... live (see :func:`resolve_base_url`).
        sha256: fold -> expected hex digest (default ``constants.FOLD_ZIP_SHA256``).
        folds: folds to fetch.
        timeout: socket timeout in seconds.

    Returns:
        fold -> path of the verified zip.

    Raises:
        PanNukeChecksumError: digest mismatch (file, expected and actual digests named).
        PanNukeDownloadError: network or HTTP failure (URL named).
    """
    base = resolve_base_url(base_url)
    expected = dict(FOLD_ZIP_SHA256 if sha256 is None else sha256)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[int, Path] = {}
    for fold in folds:
        name = FOLD_ZIP_NAMES[fold]
        url = base + name
        want = expected[fold].lower()
        target = dest / name
        if target.is_file() and sha256_of(target) == want:
            out[fold] = target
            continue
        tmp = dest / f".{name}.{os.getpid()}.part"
        logger.info("downloading %s", url)
        try:
            got = _fetch(url, tmp, timeout)
            if got != want:
                raise PanNukeChecksumError(
                    f"SHA-256 mismatch for {name} downloaded from {url}: expected {want}, got {got}"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        out[fold] = target
    return out
