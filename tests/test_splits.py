"""The reference split against scikit-learn itself, and the fold protocol schemes."""

from __future__ import annotations

import random

import datasets
import pytest
from sklearn.model_selection import train_test_split

from pannuke_hf.constants import FOLD_SIZES, REFERENCE_SPLIT_SIZES, patch_id
from pannuke_hf.data.splits import SCHEMES, make_splits, reference_split_ids, reference_split_sizes


def _fake_ids(n: int) -> list[str]:
    """n distinct ids shaped like the real ones, spread over the three folds."""
    per_fold = [n // 3 + (1 if k < n % 3 else 0) for k in range(3)]
    return [patch_id(fold, i) for fold, count in zip((1, 2, 3), per_fold) for i in range(count)]


@pytest.mark.parametrize("n", [2, 5, 7, 15, 16, 101, 999, 7901])
def test_reference_split_matches_sklearn(n):
    ids = _fake_ids(n)
    shuffled = ids[:]
    random.Random(n).shuffle(shuffled)  # the reference sorts first: input order must not matter
    train, validation = reference_split_ids(shuffled)
    expected_train, expected_validation = train_test_split(sorted(ids), test_size=0.2, random_state=0)
    assert train == list(expected_train)
    assert validation == list(expected_validation)
    assert reference_split_sizes(n) == (len(expected_train), len(expected_validation))


def test_full_release_sizes():
    real_ids = [patch_id(fold, i) for fold, size in FOLD_SIZES.items() for i in range(size)]
    train, validation = reference_split_ids(real_ids)
    assert (len(train), len(validation)) == (
        REFERENCE_SPLIT_SIZES["train"],
        REFERENCE_SPLIT_SIZES["validation"],
    )
    assert set(train).isdisjoint(validation) and set(train) | set(validation) == set(real_ids)


def test_reference_split_rejects_bad_ids():
    with pytest.raises(ValueError, match="unique"):
        reference_split_ids(["fold1_0000", "fold1_0001", "fold1_0000"])
    with pytest.raises(ValueError, match="at least 2"):
        reference_split_ids(["fold1_0000"])


def _folds(sizes: dict[int, int]) -> datasets.DatasetDict:
    """A fold DatasetDict like the builder's (id, fold, index), rows stored out of id order."""
    splits = {}
    for fold, size in sizes.items():
        rows = list(range(size))[::-1]
        splits[f"fold{fold}"] = datasets.Dataset.from_dict(
            {"id": [patch_id(fold, i) for i in rows], "fold": [fold] * size, "index": rows}
        )
    return datasets.DatasetDict(splits)


def test_make_splits_reference_on_real_sizes():
    dsdict = _folds(FOLD_SIZES)
    splits = make_splits(dsdict, "reference")
    assert set(splits) == {"train", "validation"}
    all_ids = [i for name in ("fold1", "fold2", "fold3") for i in dsdict[name]["id"]]
    expected_train, expected_validation = train_test_split(sorted(all_ids), test_size=0.2, random_state=0)
    assert list(splits["train"]["id"]) == list(expected_train)
    assert list(splits["validation"]["id"]) == list(expected_validation)
    # Rows keep their other columns: id, fold and index still agree.
    row = splits["validation"][0]
    assert row["id"] == patch_id(row["fold"], row["index"])


@pytest.mark.parametrize("scheme", ["fold1", "fold2", "fold3"])
def test_make_splits_fold_protocol(scheme):
    expected = {"fold1": (1, 2, 3), "fold2": (2, 1, 3), "fold3": (3, 2, 1)}[scheme]
    sizes = {1: 4, 2: 3, 3: 2}
    splits = make_splits(_folds(sizes), scheme)
    assert list(splits) == ["train", "validation", "test"]
    for split, fold in zip(("train", "validation", "test"), expected):
        assert set(splits[split]["fold"]) == {fold} and len(splits[split]) == sizes[fold]


def test_make_splits_fold_scheme_streaming():
    streaming = datasets.IterableDatasetDict(
        {k: v.to_iterable_dataset() for k, v in _folds({1: 2, 2: 3, 3: 1}).items()}
    )
    splits = make_splits(streaming, "fold3")
    assert isinstance(splits, datasets.IterableDatasetDict)
    assert [row["fold"] for row in splits["train"]] == [3]
    with pytest.raises(TypeError, match="streaming"):
        make_splits(streaming, "reference")


def test_make_splits_errors():
    with pytest.raises(ValueError, match="unknown split scheme 'random'"):
        make_splits(_folds({1: 2, 2: 2, 3: 2}), "random")
    with pytest.raises(KeyError, match=r"\['fold3'\] are missing"):
        make_splits(_folds({1: 2, 2: 2}), "reference")
    with pytest.raises(KeyError, match=r"\['fold1'\] are missing"):
        make_splits(_folds({2: 2, 3: 2}), "fold2")
    assert SCHEMES == ("reference", "fold1", "fold2", "fold3")
