"""Regions, windows and inference: the slide cut into overlapping regions, each predicted by windows.

Two sizes, both in model pixels (the slide resampled to the model's µm/px, see
:mod:`pannuke_hf.slides.reading`):

* **windows** (``tile_size``, ``overlap``): what one forward pass sees, laid out exactly as
  :func:`pannuke_hf.inference.predict_instances` lays them out on an image of the slide's size
  (the same :func:`~pannuke_hf.inference.plan_tiles` grid, last window aligned to the edge), and
  the logits of overlapping windows averaged the same way;
* **regions** (``region_size`` core + ``margin`` on every side): what one post-processing call
  sees. Cores tile the slide without overlap; a region's maps are the average of *every* window
  that meets it, so inside a region they equal the maps ``predict_instances`` would stitch for
  the whole slide. A region's nuclei are found on core + margin and the region keeps those whose
  centroid lies in its core (:mod:`pannuke_hf.slides.merging`): with a margin wider than the
  largest nucleus, every nucleus is whole in the region that owns it and is reported once.

Regions are numbered in raster order and grouped into **chunks** (runs of at most
``chunk_regions`` regions of one region row): the unit of resume (one part file per chunk) and,
later, of sharding over processes.

:class:`RegionDataset` reads regions for a ``torch.utils.data.DataLoader``: every worker opens its
own slide handle. :class:`WindowPredictor` batches windows across regions through the model and
hands back each region's averaged maps once all its windows are done.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..inference import _model_stride, _pad_to, _resolve, _TileRunner, plan_tiles, window_align
from .reading import ResolutionPlan, SlideError, open_slide, read_model_region

__all__ = ["Region", "RegionDataset", "RegionGrid", "WindowPredictor", "prepare_model"]


@dataclass(frozen=True)
class Region:
    """One region: its core, the box post-processed (core + margin), and the box read (all windows).

    Boxes are ``(x0, y0, x1, y1)`` in model pixels of the slide.
    """

    index: int
    row: int
    col: int
    core: tuple[int, int, int, int]
    box: tuple[int, int, int, int]
    read: tuple[int, int, int, int]
    windows: tuple[tuple[int, int], ...]  # (y, x) of each window, in slide model pixels


@dataclass
class RegionGrid:
    """The regions and windows of a slide at the model's resolution."""

    width: int
    height: int
    tile: int
    overlap: int
    region_size: int
    margin: int
    chunk_regions: int
    ys: list[int] = field(default_factory=list)  # window starts along y (slide model pixels)
    xs: list[int] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        width: int,
        height: int,
        processor: Any,
        model: torch.nn.Module,
        tile_size: int | None = None,
        overlap: int | None = None,
        region_size: int = 1024,
        margin: int = 96,
        chunk_regions: int = 16,
    ) -> RegionGrid:
        """Plan windows as ``predict_instances`` would for a ``width x height`` image, and regions."""
        tile, ov, scale = _resolve(processor, tile_size, overlap, None)
        align_px = window_align(_model_stride(model), processor, scale)
        if region_size < 1 or margin < 0 or chunk_regions < 1:
            raise ValueError(
                f"region_size, chunk_regions must be >= 1 and margin >= 0 (got {region_size}, {margin}, {chunk_regions})"
            )
        # one column / one row of the same plan: exactly predict_instances' window starts
        ys = [y for y, _ in plan_tiles(height, 1, tile, ov, align=align_px).corners]
        xs = [y for y, _ in plan_tiles(width, 1, tile, ov, align=align_px).corners]
        return cls(width, height, tile, ov, region_size, margin, chunk_regions, ys, xs)

    @property
    def rows(self) -> int:
        return math.ceil(self.height / self.region_size)

    @property
    def cols(self) -> int:
        return math.ceil(self.width / self.region_size)

    def __len__(self) -> int:
        return self.rows * self.cols

    def region(self, index: int) -> Region:
        row, col = divmod(index, self.cols)
        s, m = self.region_size, self.margin
        core = (col * s, row * s, min((col + 1) * s, self.width), min((row + 1) * s, self.height))
        box = (
            max(core[0] - m, 0),
            max(core[1] - m, 0),
            min(core[2] + m, self.width),
            min(core[3] + m, self.height),
        )
        t = self.tile
        wy = [y for y in self.ys if y < box[3] and y + t > box[1]]
        wx = [x for x in self.xs if x < box[2] and x + t > box[0]]
        read = (wx[0], wy[0], wx[-1] + t, wy[-1] + t)
        return Region(index, row, col, core, box, read, tuple((y, x) for y in wy for x in wx))

    def chunks(self) -> list[list[int]]:
        """Region indices per chunk: runs of ``chunk_regions`` within each region row."""
        out = []
        for row in range(self.rows):
            first = row * self.cols
            for start in range(0, self.cols, self.chunk_regions):
                out.append(list(range(first + start, first + min(start + self.chunk_regions, self.cols))))
        return out


# ---------------------------------------------------------------------------------------------
# Reading regions in DataLoader workers
# ---------------------------------------------------------------------------------------------

_HANDLES: dict[tuple[int, str], Any] = {}
#: Side (model pixels) of the blocks a region is read in again after a failed read.
BLOCK = 128


def _handle(path: str, reader: str | None):
    """This process's own slide handle (opened on first use; never shared across processes)."""
    key = (os.getpid(), path)
    if key not in _HANDLES:
        _HANDLES[key] = open_slide(path, reader)
    return _HANDLES[key]


class RegionDataset(torch.utils.data.Dataset):
    """Regions of one slide read at the model's resolution; a failed read yields its error instead.

    Items: ``{"index", "image" (H, W, 3) uint8 covering ``region.read`` or None, "error",
    "seconds"}``.
    """

    def __init__(
        self, path: str, reader: str | None, plan: ResolutionPlan, grid: RegionGrid, indices: list[int]
    ):
        self.path, self.reader, self.plan, self.grid, self.indices = path, reader, plan, grid, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        start = time.perf_counter()
        region = self.grid.region(self.indices[item])
        x0, y0, x1, y1 = region.read
        # inside the slide only; windows beyond it (slides smaller than a window) are
        # reflect-padded exactly as predict_instances pads a small image
        w, h = min(x1, self.grid.width) - x0, min(y1, self.grid.height) - y0
        error, lost = None, 0
        try:
            image = read_model_region(self._slide(), self.plan, x0, y0, w, h)
        except (SlideError, OSError, ValueError) as err:
            # a corrupt tile: read the region again in blocks, white where a block fails, so
            # only the unreadable area is lost (and counted), not the whole region
            error = str(err).splitlines()[0]
            self._drop()
            image = np.full((h, w, 3), 255, dtype=np.uint8)
            step = BLOCK
            for by in range(0, h, step):
                for bx in range(0, w, step):
                    bw, bh = min(step, w - bx), min(step, h - by)
                    try:
                        image[by : by + bh, bx : bx + bw] = read_model_region(
                            self._slide(), self.plan, x0 + bx, y0 + by, bw, bh
                        )
                    except (SlideError, OSError, ValueError):
                        self._drop()
                        lost += bw * bh
            if lost == w * h:
                image = None
        if image is not None:
            image = _pad_to(image, y1 - y0, x1 - x0)
        return {
            "index": region.index,
            "image": image,
            "error": error,
            "lost_pixels": lost,
            "seconds": time.perf_counter() - start,
        }

    def _slide(self):
        return _handle(self.path, self.reader)

    def _drop(self) -> None:
        # an OpenSlide handle stays in its error state after a failed read: open a new one
        stale = _HANDLES.pop((os.getpid(), self.path), None)
        if stale is not None:
            stale.close()


def _collate(items):
    return items[0]


def region_loader(dataset: RegionDataset, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over regions (one region per item), ``workers`` reader processes."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


def prepare_model(
    model: torch.nn.Module,
    device: str | torch.device | None = None,
    precision: str = "auto",
    compile: bool = False,
) -> torch.nn.Module:
    """Move the model to ``device`` in eval mode; on CUDA (``precision="auto"``) bf16 + channels_last.

    ``precision``: ``"auto"`` (bf16 on CUDA when supported, else fp32), ``"fp32"`` or ``"bf16"``.
    ``compile``: wrap the model in ``torch.compile`` (off by default: compiling takes tens of
    seconds, which only large slides win back).
    """
    if device is not None:
        model = model.to(device)
    model.eval()
    dev = next(model.parameters()).device
    use_bf16 = precision == "bf16" or (
        precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if use_bf16:
        model = model.to(dtype=torch.bfloat16)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if compile:
        model = torch.compile(model)
    return model


@dataclass
class _RegionJob:
    region: Region
    image: np.ndarray
    sums: torch.Tensor | None = None
    count: torch.Tensor | None = None
    pending: int = 0


class WindowPredictor:
    """Windows of many regions through the model in batches; yields finished regions' maps.

    ``add(region, image)`` queues the region's windows (running full batches as they fill) and
    returns the regions finished so far as ``(region, maps)``: ``maps`` (C, h, w) float32 over
    ``region.box`` (class logits, then for a distance-map model the nucleus logits and the hv
    maps). ``flush()`` runs the last partial batch. ``num_labels`` / ``has_hv`` describe the
    channels once a batch has run.
    """

    def __init__(self, model: torch.nn.Module, processor: Any, grid: RegionGrid, batch_size: int = 8):
        _, _, scale = _resolve(processor, grid.tile, grid.overlap, None)
        self.runner = _TileRunner(model, processor, scale, all_maps=True)
        self.grid, self.batch_size = grid, batch_size
        self.queue: list[tuple[_RegionJob, int, int]] = []
        self.jobs: list[_RegionJob] = []
        self.seconds = 0.0
        self.windows = 0

    @property
    def num_labels(self) -> int | None:
        return self.runner.num_labels

    @property
    def has_hv(self) -> bool:
        return self.runner.has_hv

    def _run(self) -> None:
        batch, self.queue = self.queue, []
        t = self.grid.tile
        tiles = np.stack([job.image[y : y + t, x : x + t] for job, y, x in batch])
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.runner(tiles)
        self.seconds += time.perf_counter() - start
        self.windows += len(batch)
        for (job, y, x), lg in zip(batch, logits):
            if job.sums is None:
                h, w = job.image.shape[:2]
                job.sums = torch.zeros((lg.shape[0], h, w))
                job.count = torch.zeros((h, w))
            job.sums[:, y : y + t, x : x + t] += lg
            job.count[y : y + t, x : x + t] += 1
            job.pending -= 1

    def _finished(self) -> Iterator[tuple[Region, np.ndarray]]:
        done = [job for job in self.jobs if job.pending == 0]
        self.jobs = [job for job in self.jobs if job.pending > 0]
        for job in done:
            r = job.region
            bx0, by0, bx1, by1 = (
                r.box[0] - r.read[0],
                r.box[1] - r.read[1],
                r.box[2] - r.read[0],
                r.box[3] - r.read[1],
            )
            maps = (job.sums[:, by0:by1, bx0:bx1] / job.count[by0:by1, bx0:bx1]).numpy()
            yield r, maps

    def add(self, region: Region, image: np.ndarray) -> list[tuple[Region, np.ndarray]]:
        job = _RegionJob(region, image, pending=len(region.windows))
        self.jobs.append(job)
        rx, ry = region.read[0], region.read[1]
        for y, x in region.windows:
            self.queue.append((job, y - ry, x - rx))
            if len(self.queue) == self.batch_size:
                self._run()
        return list(self._finished())

    def flush(self) -> list[tuple[Region, np.ndarray]]:
        if self.queue:
            self._run()
        return list(self._finished())
