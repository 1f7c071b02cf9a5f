"""Train / validation (/ test) splits of PanNuke: the reference split and the 3-fold protocol.

* ``"reference"``: the split of the mmsegmentation PanNuke project. All patch ids sorted
  (``fold1_0000`` ... ``fold3_2721``), then scikit-learn's
  ``train_test_split(ids, test_size=0.2, random_state=0)``: 6320 train / 1581 validation on the
  full release, same members in the same order. Re-implemented here with numpy alone, so
  scikit-learn is not needed at run time (the tests compare against it).
* ``"fold1"``, ``"fold2"``, ``"fold3"``: the official protocol rows (train, validation, test) =
  (1, 2, 3), (2, 1, 3), (3, 2, 1).

Example::

    import datasets, pannuke_hf
    from pannuke_hf.data.splits import make_splits

    folds = datasets.load_dataset("pannuke_hf", data_dir="raw/")  # fold1, fold2, fold3
    splits = make_splits(folds, "reference")  # train 6320, validation 1581
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import FOLD_PROTOCOL, FOLDS, REFERENCE_SPLIT_SEED, REFERENCE_SPLIT_TEST_SIZE

__all__ = [
    "SCHEMES",
    "fold_split_names",
    "make_splits",
    "read_training_record",
    "reference_split_ids",
    "reference_split_sizes",
    "split_overlaps_training",
    "training_data_record",
]

#: Split schemes understood by :func:`make_splits`.
SCHEMES: tuple[str, ...] = ("reference", *(f"fold{k}" for k in FOLDS))


def reference_split_sizes(num_ids: int) -> tuple[int, int]:
    """``(n_train, n_validation)`` of the reference split of ``num_ids`` ids.

    scikit-learn's rule for a float ``test_size``: ``n_test = ceil(test_size * n)`` computed in
    floating point exactly as it does (so e.g. 15 ids give 4 test ids, not 3), and the rest train.
    """
    n_test = math.ceil(REFERENCE_SPLIT_TEST_SIZE * num_ids)
    n_train = num_ids - n_test
    if n_train <= 0:
        raise ValueError(f"the reference split needs at least 2 ids, got {num_ids}")
    return n_train, n_test


def reference_split_ids(ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """The reference train / validation split of patch ids, without scikit-learn.

    Args:
        ids: patch ids (e.g. ``"fold1_0000"``), in any order; they are sorted first, as the
            reference split tool does. Must be unique.

    Returns:
        ``(train_ids, validation_ids)`` with the members and the order of
        ``sklearn.model_selection.train_test_split(sorted(ids), test_size=0.2, random_state=0)``.
    """
    ordered = sorted(ids)
    if len(set(ordered)) != len(ordered):
        duplicates = sorted(i for i, count in Counter(ordered).items() if count > 1)[:5]
        raise ValueError(f"patch ids must be unique; duplicated: {duplicates}")
    n_train, n_test = reference_split_sizes(len(ordered))
    # scikit-learn's ShuffleSplit: one permutation from the legacy RandomState(seed); its first
    # n_test entries are the test set, the next n_train the training set.
    permutation = np.random.RandomState(REFERENCE_SPLIT_SEED).permutation(len(ordered))
    validation = [ordered[i] for i in permutation[:n_test]]
    train = [ordered[i] for i in permutation[n_test : n_test + n_train]]
    return train, validation


def fold_split_names(scheme: str) -> dict[str, str]:
    """Which fold split serves as train / validation / test in a fold scheme.

    ``fold_split_names("fold2") == {"train": "fold2", "validation": "fold1", "test": "fold3"}``.
    """
    if scheme not in SCHEMES[1:]:
        raise ValueError(f"unknown fold scheme {scheme!r}; expected one of {list(SCHEMES[1:])}")
    train, validation, test = FOLD_PROTOCOL[int(scheme[len("fold") :]) - 1]
    return {"train": f"fold{train}", "validation": f"fold{validation}", "test": f"fold{test}"}


def _require_folds(dsdict: Mapping, names: Sequence[str], scheme: str) -> None:
    missing = [name for name in names if name not in dsdict]
    if missing:
        raise KeyError(
            f"scheme {scheme!r} needs the splits {list(names)} but {missing} are missing; "
            f"the dataset has {sorted(dsdict)}"
        )


def _id_column(dataset) -> list[str]:
    """The ``id`` column as python strings, without decoding the image columns."""
    if "id" not in dataset.column_names:
        raise KeyError(f"the dataset has no 'id' column (columns: {dataset.column_names})")
    return list(dataset.select_columns(["id"])["id"])


def make_splits(dsdict, scheme: str = "reference"):
    """Turn the ``fold1`` / ``fold2`` / ``fold3`` DatasetDict into training splits.

    Args:
        dsdict: a ``datasets.DatasetDict`` with (at least) the fold splits the scheme needs, as
            built by the PanNuke builder (``load_dataset("pannuke_hf", data_dir=...)``). Fold
            schemes also accept an ``IterableDatasetDict`` (streaming).
        scheme: ``"reference"`` (train / validation, the reference project's 80/20 split of
            the three folds together) or ``"fold1"``, ``"fold2"``, ``"fold3"`` (train /
            validation / test = the official protocol row).

    Returns:
        A ``DatasetDict`` with ``train`` and ``validation`` (and ``test`` for fold schemes).
        For ``"reference"`` the rows are in the order of the reference split tool.
    """
    import datasets

    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; expected one of {list(SCHEMES)}")
    if scheme != "reference":
        names = fold_split_names(scheme)
        _require_folds(dsdict, list(names.values()), scheme)
        container = (
            datasets.IterableDatasetDict
            if isinstance(dsdict, datasets.IterableDatasetDict)
            else datasets.DatasetDict
        )
        return container({split: dsdict[fold] for split, fold in names.items()})

    fold_names = [f"fold{k}" for k in FOLDS]
    _require_folds(dsdict, fold_names, scheme)
    if any(isinstance(dsdict[name], datasets.IterableDataset) for name in fold_names):
        raise TypeError(
            "the reference split selects rows by id and needs map-style datasets; "
            "load without streaming=True (or use a fold scheme)"
        )
    # Concatenated in fold order; rows are then picked by id, so the row order of the input
    # does not matter.
    combined = datasets.concatenate_datasets([dsdict[name] for name in fold_names])
    ids = _id_column(combined)
    row_of = {patch: row for row, patch in enumerate(ids)}
    if len(row_of) != len(ids):
        raise ValueError("patch ids are not unique across fold1, fold2 and fold3")
    train_ids, validation_ids = reference_split_ids(ids)
    return datasets.DatasetDict(
        {
            "train": combined.select([row_of[i] for i in train_ids]),
            "validation": combined.select([row_of[i] for i in validation_ids]),
        }
    )


# ---------------------------------------------------------------------------------------------
# What a checkpoint was trained on, and whether an evaluation split overlaps it
# ---------------------------------------------------------------------------------------------

#: Key of the training record in a checkpoint's ``config.json``.
TRAINING_RECORD_KEY: str = "training_data"


def training_data_record(
    split_scheme: str, void_label: int = 0, synthetic_data: bool = False
) -> dict[str, Any]:
    """The record ``train.py`` stores in ``config.json`` (``config.training_data``).

    Args:
        split_scheme: the scheme the model was trained with (its ``train`` split was the training data).
        void_label: the label void pixels had (0 or 255).
        synthetic_data: trained on generated data.
    """
    if split_scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {split_scheme!r}; expected one of {list(SCHEMES)}")
    return {
        "split_scheme": split_scheme,
        "void_label": int(void_label),
        "synthetic_data": bool(synthetic_data),
    }


def read_training_record(model_dir: str | Path) -> dict[str, Any] | None:
    """What a local checkpoint folder says about its training data, or None when it says nothing.

    Read, in order: ``config.json``'s ``training_data`` (written by ``train.py``); for checkpoints
    saved before that record existed, the ``split_scheme`` of the ``results.json`` the training run
    wrote beside the model, then the model card's "split scheme `...`" line; a ``checkpoint-N``
    folder also looks in its run folder. Nothing is loaded but small text files.

    Returns:
        ``{"split_scheme", ...}`` (plus ``"source"``: the file it came from), or None.
    """
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        return None
    config = _read_json(folder / "config.json")
    record = config.get(TRAINING_RECORD_KEY) if isinstance(config, dict) else None
    if isinstance(record, dict) and record.get("split_scheme") in SCHEMES:
        return {**record, "source": str(folder / "config.json")}
    candidates = [folder] + ([folder.parent] if folder.name.startswith("checkpoint-") else [])
    for candidate in candidates:
        results = _read_json(candidate / "results.json")
        if (
            isinstance(results, dict)
            and results.get("split_scheme") in SCHEMES
            and "checkpoint" not in results
        ):
            # a training run's results (an evaluation's results.json names its "checkpoint")
            return {"split_scheme": results["split_scheme"], "source": str(candidate / "results.json")}
        card = candidate / "README.md"
        if card.is_file():
            match = re.search(r"split scheme `(\w+)`", card.read_text(errors="replace"))
            if match and match.group(1) in SCHEMES:
                return {"split_scheme": match.group(1), "source": str(card)}
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def split_overlaps_training(trained_scheme: str, scheme: str, split: str) -> bool:
    """Whether split ``split`` of ``scheme`` holds patches of the training split of ``trained_scheme``.

    The reference split draws its train and validation patches from all three folds, so it
    overlaps the training fold of every fold scheme and every fold overlaps its training split;
    fold schemes overlap when the split is the training fold.
    """
    for name in (trained_scheme, scheme):
        if name not in SCHEMES:
            raise ValueError(f"unknown split scheme {name!r}; expected one of {list(SCHEMES)}")
    if trained_scheme == scheme:
        return split == "train"
    if "reference" in (trained_scheme, scheme):
        return True
    names = fold_split_names(scheme)
    if split not in names:
        raise ValueError(f"split scheme {scheme!r} has no split {split!r} (splits: {list(names)})")
    return names[split] == fold_split_names(trained_scheme)["train"]
