"""Data for training and evaluation: raw folds -> Arrow dataset -> splits -> lazy transforms."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch

from ..constants import IMAGE_MEAN, IMAGE_STD
from .augment import SegmentationTransform

logger = logging.getLogger(__name__)

#: Where the demo keeps its generated raw data (reused by later runs).
DEFAULT_DEMO_DIR: Path = Path("~/.cache/pannuke_hf/demo").expanduser()


def ensure_synthetic_data(data_dir: str | Path | None, patches_per_fold: int, seed: int) -> Path:
    """Generate PanNuke-format folds into ``data_dir`` unless the same generation is already there.

    Args:
        data_dir: target folder (default ``~/.cache/pannuke_hf/demo/raw-<n>-<seed>``).
        patches_per_fold: patches per fold.
        seed: seed of the generator.

    Returns:
        The folder holding ``Fold 1``..``Fold 3``.
    """
    from ..data.synthetic import make_synthetic_folds

    root = Path(data_dir) if data_dir else DEFAULT_DEMO_DIR / f"raw-{patches_per_fold}-{seed}"
    marker = root / ".pannuke_hf_synthetic"
    stamp = f"patches_per_fold={patches_per_fold} seed={seed}\n"
    if marker.is_file() and marker.read_text() == stamp:
        logger.info("reusing generated data in %s", root)
        return root
    logger.info("generating %d patches per fold into %s", patches_per_fold, root)
    make_synthetic_folds(root, patches_per_fold, seed=seed)
    marker.write_text(stamp)
    return root


def load_folds(
    data_dir: str | Path, cache_dir: str | None = None, num_proc: int | None = None
) -> datasets.DatasetDict:
    """Build (or reuse) the Arrow dataset of the raw folds in ``data_dir``.

    Args:
        data_dir: folder with ``Fold k/`` folders or ``fold_k.zip`` files.
        cache_dir: datasets cache folder (default: the datasets cache).
        num_proc: processes for the first build.

    Returns:
        ``DatasetDict`` with splits ``fold1``, ``fold2``, ``fold3``.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
    """
    import pannuke_hf  # noqa: F401 - registers the "pannuke_hf" builder name

    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"PanNuke data_dir {str(path)!r} does not exist: pass --data_dir with the folder holding "
            "'Fold 1'..'Fold 3' (or fold_1.zip..fold_3.zip), or --synthetic_data true for generated data"
        )
    return datasets.load_dataset("pannuke_hf", data_dir=str(path), cache_dir=cache_dir, num_proc=num_proc)


def load_splits(
    data_dir: str | Path,
    scheme: str = "reference",
    cache_dir: str | None = None,
    num_proc: int | None = None,
) -> datasets.DatasetDict:
    """The training splits of a raw release: ``train``, ``validation`` (+ ``test`` for fold schemes).

    Args:
        data_dir: raw folds folder.
        scheme: ``"reference"`` or ``"fold1"``/``"fold2"``/``"fold3"`` (see ``make_splits``).
        cache_dir, num_proc: see :func:`load_folds`.

    Returns:
        The split ``DatasetDict``.
    """
    from ..data.splits import make_splits

    return make_splits(load_folds(data_dir, cache_dir, num_proc), scheme=scheme)


def take_first(dataset: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    """The first ``limit`` rows of ``dataset`` (all rows when ``limit`` is None)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if limit <= 0:
        raise ValueError(f"a sample limit must be positive, got {limit}")
    return dataset.select(range(limit))


def with_transform(
    dataset: datasets.Dataset,
    size: int,
    train: bool,
    augment: bool = True,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
    seed: int = 0,
) -> datasets.Dataset:
    """Attach the lazy transform (decode -> resize -> augment -> normalise) to ``dataset``.

    Only the ``image`` and ``semantic_mask`` columns are decoded (the 16-bit instance maps are
    skipped), which keeps the loader fast.

    Args:
        dataset: a split with ``image`` and ``semantic_mask`` columns.
        size: model input side.
        train: training transform (flip + photometric when ``augment``), else resize only with
            the label kept at its stored resolution (the reference scores there).
        augment: apply the random augmentations (training only).
        mean, std: normalisation on the 0-255 scale.
        seed: base seed of the augmentation stream.

    Returns:
        A view of the dataset whose rows are ``{"pixel_values", "labels"}`` tensors.
    """
    missing = {"image", "semantic_mask"} - set(dataset.column_names)
    if missing:
        raise KeyError(f"the dataset lacks column(s) {sorted(missing)} (columns: {dataset.column_names})")
    dataset = dataset.select_columns(["image", "semantic_mask"])
    transform = SegmentationTransform(
        size,
        train=train and augment,
        mean=mean,
        std=std,
        seed=seed,
        resize_label=train,
    )
    dataset.set_transform(transform)
    return dataset


def collate_segmentation(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` (B, 3, H, W) and ``labels`` (B, h, w) of a list of examples."""
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.stack([e["labels"] for e in examples])
    return batch
