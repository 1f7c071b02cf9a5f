"""Augmentation streams: DataLoader workers, ranks, epochs and resumed runs.

Every row of these tiny datasets holds the same image, so two outputs differ only when their
random draws differ. Two independent draws can still coincide by chance (both leave the image
untouched, ~1/32), so "different streams" allows at most one coincidence where a shared stream
would repeat every output.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pannuke_hf.training.arguments import PanNukeTrainingArguments
from pannuke_hf.training.augment import SegmentationTransform
from pannuke_hf.training.data import (
    AugmentationEpochCallback,
    AugmentedDataset,
    collate_segmentation,
    with_transform,
)
from pannuke_hf.training.trainer import PanNukeTrainer

SIZE = 8


def same_image_split(rows: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    image = rng.integers(30, 226, (SIZE, SIZE, 3), dtype=np.uint8)
    label = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 6).astype(np.uint8)
    features = datasets.Features({"image": datasets.Image(), "semantic_mask": datasets.Image()})
    return datasets.Dataset.from_dict(
        {"image": [image] * rows, "semantic_mask": [label] * rows}, features=features
    )


def load_all(
    dataset, workers: int, sampler=None, persistent: bool = False, epochs=(0,)
) -> list[torch.Tensor]:
    loader = DataLoader(
        dataset,
        batch_size=2,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=persistent,
        collate_fn=collate_segmentation,
    )
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        for batch in loader:
            out.extend(batch["pixel_values"])
    return out


def all_distinct(tensors: list[torch.Tensor]) -> bool:
    """At most one chance coincidence among the outputs."""
    return len(tensors) - len({t.numpy().tobytes() for t in tensors}) <= 1


def test_two_workers_draw_different_reproducible_streams():
    dataset = with_transform(same_image_split(8), SIZE, train=True, seed=0)
    assert isinstance(dataset, AugmentedDataset)
    in_process = load_all(dataset, workers=0)
    two_workers = load_all(dataset, workers=2)
    assert all_distinct(in_process)  # rows 0, 1 (worker 0) and 2, 3 (worker 1) ... all differ
    assert all(torch.equal(a, b) for a, b in zip(in_process, two_workers))  # reproducible
    again = load_all(with_transform(same_image_split(8), SIZE, train=True, seed=0), workers=2)
    assert all(torch.equal(a, b) for a, b in zip(two_workers, again))
    other_seed = load_all(with_transform(same_image_split(8), SIZE, train=True, seed=1), workers=2)
    assert not any(torch.equal(a, b) for a, b in zip(two_workers, other_seed))


def test_persistent_workers_follow_the_epoch():
    dataset = with_transform(same_image_split(4), SIZE, train=True, seed=0)
    persistent = load_all(dataset, workers=2, persistent=True, epochs=(0, 1, 2))
    assert all_distinct(persistent)  # a new epoch never repeats the draws of an earlier one
    fresh = with_transform(same_image_split(4), SIZE, train=True, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(persistent, load_all(fresh, 0, epochs=(0, 1, 2))))


def test_two_ranks_draw_different_reproducible_streams():
    def rank_stream(rank: int) -> list[torch.Tensor]:
        dataset = with_transform(same_image_split(8), SIZE, train=True, seed=0)
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        return load_all(dataset, workers=0, sampler=sampler)

    rank0, rank1 = rank_stream(0), rank_stream(1)
    assert len(rank0) == len(rank1) == 4
    assert all_distinct(rank0 + rank1)
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank_stream(0)))


def test_unkeyed_set_transform_streams_differ_per_rank(monkeypatch):
    """The plain ``set_transform`` path (no row key) seeds its stream with the process rank."""
    split = same_image_split(6)
    batch = split[:6]

    def stream(rank: str) -> list[torch.Tensor]:
        monkeypatch.setenv("RANK", rank)
        return SegmentationTransform(SIZE, train=True, seed=0)(batch)["pixel_values"]

    rank0, rank1 = stream("0"), stream("1")
    assert all_distinct(rank0 + rank1)
    assert all(torch.equal(a, b) for a, b in zip(rank0, stream("0")))


class TinySegmenter(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 1)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.conv(pixel_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def train_and_record(output_dir, max_steps: int, resume: str | None = None) -> list[torch.Tensor]:
    """Train on 4 identical rows (2 steps per epoch); return every example the model saw."""
    seen: list[torch.Tensor] = []

    def collate(examples):
        batch = collate_segmentation(examples)
        seen.extend(batch["pixel_values"])
        return batch

    dataset = with_transform(same_image_split(4), SIZE, train=True, seed=7)
    args = PanNukeTrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=2,
        learning_rate=0.01,
        save_strategy="steps",
        save_steps=3,
        eval_strategy="no",
        do_eval=False,
        logging_steps=100,
        dataloader_num_workers=0,
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    torch.manual_seed(0)
    trainer = PanNukeTrainer(
        model=TinySegmenter(),
        args=args,
        train_dataset=dataset,
        data_collator=collate,
        callbacks=[AugmentationEpochCallback(dataset)],
    )
    trainer.train(resume_from_checkpoint=resume)
    return seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_resumed_run_continues_the_same_streams(tmp_path):
    uninterrupted = train_and_record(tmp_path / "a", max_steps=6)
    assert len(uninterrupted) == 12  # 6 steps of 2 over 3 epochs
    assert all_distinct(uninterrupted)  # every epoch draws anew
    train_and_record(tmp_path / "b", max_steps=3)  # stops at the checkpoint of step 3 (mid epoch 1)
    # The continued run (same max_steps as the uninterrupted one) resumes from step 3.
    resumed = train_and_record(tmp_path / "b", max_steps=6, resume=str(tmp_path / "b" / "checkpoint-3"))
    assert len(resumed) == 6  # steps 4, 5, 6
    assert all(torch.equal(a, b) for a, b in zip(resumed, uninterrupted[6:]))
