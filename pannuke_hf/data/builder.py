"""The PanNuke ``datasets`` builder: three raw folds -> Arrow splits ``fold1``, ``fold2``, ``fold3``.

Usage::

    import datasets
    import pannuke_hf  # registers the builder

    ds = datasets.load_dataset("pannuke_hf", data_dir="/data/pannuke")            # folders or zips
    ds = datasets.load_dataset("pannuke_hf", data_dir=..., num_proc=2)           # parallel build
    ds = datasets.load_dataset("pannuke_hf", data_dir=..., streaming=True)       # no Arrow cache
    ds = datasets.load_dataset("pannuke_hf")                                     # download zips

    from pannuke_hf.data.builder import PanNuke
    builder = PanNuke(data_dir=..., cache_dir=...)
    builder.download_and_prepare()
    ds = builder.as_dataset()

File work (finding, extracting, memory-mapping, validating, converting) lives in
:mod:`pannuke_hf.data.raw`: ``datasets`` patches ``open``, ``pathlib.Path`` and ``np.load`` of
every builder module for streaming, so this module deliberately does no file I/O itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError

from ..constants import (
    CITATION,
    CLASS_NAMES,
    FOLD_ZIP_SHA256,
    FOLDS,
    HOMEPAGE,
    IGNORE_INDEX,
    LICENSE,
    TISSUES,
    VOID_LABELS,
    patch_id,
)
from . import raw
from .download import download_fold_zips, resolve_base_url
from .registration import DATASET_NAME, build_code_hash

_DESCRIPTION = """\
PanNuke: 7,901 H&E patches (256x256 pixels, 40x) from 19 tissues with every nucleus outlined and
classified (neoplastic, inflammatory, connective / soft tissue, dead, non-neoplastic epithelial).
Splits are the three official folds. Each row holds the RGB image, a semantic label map (values
0-5 as in the mmsegmentation PanNuke project, with correct names), a 16-bit instance map
(0 = no nucleus, 1..K) and the class and raw id of every instance.
"""

#: Patches per shard of a fold; shards are what ``num_proc`` distributes over processes.
PATCHES_PER_SHARD: int = 256
#: Minimum number of shards per fold (if it has that many patches), so small folds parallelise too.
MIN_SHARDS: int = 8


def pannuke_features() -> datasets.Features:
    """The features of a PanNuke row (see the README's schema table)."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "fold": datasets.Value("int8"),
            "index": datasets.Value("int32"),
            "tissue": datasets.ClassLabel(names=list(TISSUES)),
            "image": datasets.Image(),
            "semantic_mask": datasets.Image(),
            "instance_mask": datasets.Image(),
            "instance_labels": datasets.List(datasets.ClassLabel(names=list(CLASS_NAMES))),
            "instance_raw_ids": datasets.List(datasets.Value("int32")),
        }
    )


@dataclass
class PanNukeConfig(datasets.BuilderConfig):
    """Configuration of the PanNuke builder.

    Attributes:
        void_label: label written to "void" pixels (no nucleus class and background channel 0):
            0 (default) treats them as background, as the reference project does; 255 makes the
            loss and metrics ignore them.
        base_url: where to download ``fold_k.zip`` when no ``data_dir`` is given (default
            ``$PANNUKE_BASE_URL`` or the official URL).
        sha256: fold -> expected SHA-256 of its zip (default: the official digests); for mirrors.
    """

    void_label: int = 0
    base_url: str | None = None
    sha256: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        # Only the two documented values: any other label would turn void pixels into a class
        # (3 = connective tissue), silently.
        valid = isinstance(self.void_label, (int, np.integer)) and not isinstance(self.void_label, bool)
        if not valid or int(self.void_label) not in VOID_LABELS:
            raise ValueError(
                f"void_label must be 0 (void pixels are background, as the reference) or {IGNORE_INDEX} "
                f"(losses and metrics ignore them), got {self.void_label!r}"
            )
        self.void_label = int(self.void_label)


def _png_params() -> dict[str, list[int]]:
    """OpenCV PNG settings per kind of array (imported here: cv2 is not needed to load the data).

    Level-1 deflate with zlib's run-length strategy and one fixed row filter each: about as small
    as PIL's default (level 6, adaptive filters) on H&E patches and label maps, at a quarter of
    its encoding time (encoding dominates the build). "sub" suits photographs, no filter the flat
    uint8 label map, "up" the 16-bit instance map. The decoded pixels are the same whatever the
    settings (PNG is lossless).
    """
    import cv2

    def params(row_filter: int) -> list[int]:
        return [
            cv2.IMWRITE_PNG_COMPRESSION, 1,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, row_filter,
        ]  # fmt: skip

    return {
        "rgb": params(cv2.IMWRITE_PNG_FILTER_SUB),
        "uint8": params(cv2.IMWRITE_PNG_FILTER_NONE),
        "uint16": params(cv2.IMWRITE_PNG_FILTER_UP),
    }


_PNG_PARAMS: dict[str, list[int]] = {}


def _png(array: np.ndarray) -> dict:
    """Encode a uint8 RGB image or a uint8 / uint16 single-channel map as PNG bytes, in the form
    ``datasets.Image`` stores as is (and decodes with PIL to the same array)."""
    import cv2

    if not _PNG_PARAMS:
        _PNG_PARAMS.update(_png_params())
    if array.ndim == 3:
        kind, array = "rgb", cv2.cvtColor(array, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR order
    elif array.dtype == np.uint16:
        kind = "uint16"
    else:
        kind = "uint8"
    ok, encoded = cv2.imencode(".png", array, _PNG_PARAMS[kind])
    if not ok:  # pragma: no cover - OpenCV reports no reason
        raise RuntimeError(f"OpenCV could not encode a {array.dtype} array of shape {array.shape} as PNG")
    return {"bytes": encoded.tobytes(), "path": None}


def _shards(num_patches: int) -> list[tuple[int, int]]:
    """Split ``range(num_patches)`` into contiguous ``(start, stop)`` ranges."""
    if num_patches == 0:
        return []
    count = max(min(num_patches, MIN_SHARDS), math.ceil(num_patches / PATCHES_PER_SHARD))
    bounds = np.linspace(0, num_patches, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _cache_key(data_dir: str | None, base_url: str | None, sha256: dict | None) -> str:
    """Hash of the builder code and of the raw inputs: any change gives a fresh cache entry."""
    if data_dir is not None:
        inputs = raw.source_fingerprint(raw.find_fold_sources(data_dir))
    else:
        digests = {int(k): v for k, v in (sha256 or FOLD_ZIP_SHA256).items()}
        inputs = ["download", resolve_base_url(base_url), sorted(digests.items())]
    payload = json.dumps([build_code_hash(), inputs], default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class PanNuke(datasets.GeneratorBasedBuilder):
    """PanNuke as a ``datasets`` builder: splits ``fold1``/``fold2``/``fold3``, one row per patch.

    Args:
        data_dir: folder with the raw folds (``Fold k/...`` folders or ``fold_k.zip`` files);
            ``None`` downloads the three zips (checksums verified).
        cache_dir: ``datasets`` cache folder.
        void_label, base_url, sha256: see :class:`PanNukeConfig`.
        **kwargs: the usual :class:`datasets.DatasetBuilder` arguments.

    The cache entry is keyed by the builder code, the config and the path, size and mtime of
    every raw file: editing either gives a fresh build instead of stale data.
    """

    BUILDER_CONFIG_CLASS = PanNukeConfig
    VERSION = datasets.Version("1.0.0")

    def __init__(self, *args, dataset_name: str | None = None, hash: str | None = None, **kwargs):
        data_files = kwargs.pop("data_files", None)
        if data_files:
            raise ValueError("PanNuke reads the raw folds from data_dir=...; data_files is not supported")
        # An option given at its default value must not change the cache entry (config id).
        for name in ("void_label", "base_url", "sha256"):
            if name in kwargs and kwargs[name] == PanNukeConfig.__dataclass_fields__[name].default:
                del kwargs[name]
        # `hash` (from load_dataset) is replaced by a key that also covers the raw files.
        key = _cache_key(kwargs.get("data_dir"), kwargs.get("base_url"), kwargs.get("sha256"))
        super().__init__(*args, dataset_name=dataset_name or DATASET_NAME, hash=key, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=pannuke_features(),
            homepage=HOMEPAGE,
            license=LICENSE,
            citation=CITATION,
        )

    def _fold_roots(self) -> dict[int, str]:
        """fold -> folder containing ``Fold k``, downloading and extracting zips as needed."""
        extract_dir = f"{self._cache_dir_root}/downloads/pannuke_hf/extracted"
        if self.config.data_dir is None:
            sources = download_fold_zips(
                f"{self._cache_dir_root}/downloads/pannuke_hf",
                base_url=self.config.base_url,
                sha256=None
                if self.config.sha256 is None
                else {int(k): v for k, v in self.config.sha256.items()},
            )
        else:
            sources = raw.find_fold_sources(self.config.data_dir)
        roots = {}
        for fold, source in sources.items():
            if source.is_file():
                source = raw.extract_fold_zip(source, fold, extract_dir)
            roots[fold] = str(source)
        return roots

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        generators = []
        for fold, root in self._fold_roots().items():
            files = raw.fold_files(root, fold)
            num_patches = len(raw.open_fold(files))  # validates headers, counts and tissues now
            generator = datasets.SplitGenerator(
                name=f"fold{fold}",
                gen_kwargs={
                    "fold": fold,
                    "images": str(files.images),
                    "types": str(files.types),
                    "masks": str(files.masks),
                    "shards": _shards(num_patches),
                },
            )
            generator.split_info.num_examples = num_patches
            generators.append(generator)
        return generators

    def _generate_examples(
        self, fold: int, images: str, types: str, masks: str, shards: list[tuple[int, int]]
    ):
        files = raw.FoldFiles(fold=fold, images=images, types=types, masks=masks)
        tissues = raw.open_fold(files).types
        void_label = self.config.void_label
        for start, stop in shards:
            for index, patch in raw.iter_patches(files, start, stop, void_label):
                key = patch_id(fold, index)
                yield (
                    key,
                    {
                        "id": key,
                        "fold": fold,
                        "index": index,
                        "tissue": tissues[index],
                        "image": _png(patch.image),
                        "semantic_mask": _png(patch.semantic),
                        "instance_mask": _png(patch.instance),
                        "instance_labels": patch.instance_labels,
                        "instance_raw_ids": patch.instance_raw_ids,
                    },
                )

    def _prepare_split_single(self, *args, **kwargs):
        # Surface data errors as themselves (file and patch named) rather than as the generic
        # DatasetGenerationError; also works across num_proc worker processes.
        try:
            yield from super()._prepare_split_single(*args, **kwargs)
        except DatasetGenerationError as err:
            if isinstance(err.__cause__, raw.PanNukeDataError):
                raise err.__cause__ from None
            raise


FOLD_SPLITS: tuple[str, ...] = tuple(f"fold{k}" for k in FOLDS)
