"""``segment_slide``: every nucleus of a whole slide, in bounded memory, ready for QuPath.

Reads top to bottom as the stages run: open the slide, decide the resolution, find the tissue,
plan regions, skip the chunks an earlier run finished, then read (DataLoader workers) -> infer
(batches of windows) -> post-process (a process pool) -> write a part per chunk, and finally
stream the parts into the outputs. See :mod:`pannuke_hf.slides` for the files written.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import MICRONS_PER_PIXEL
from .merging import region_nuclei
from .reading import SlideError, open_slide, plan_resolution
from .tiling import RegionDataset, RegionGrid, WindowPredictor, region_loader
from .tissue import detect_tissue, load_tissue_mask
from .writing import done_chunks, finalize, output_paths, slide_name, write_part

__all__ = ["DEFAULT_MODEL_MPP", "model_mpp", "segment_slide"]

#: µm/px assumed for models whose config records none (PanNuke is 40x).
DEFAULT_MODEL_MPP = MICRONS_PER_PIXEL
#: Largest side of the thumbnail (pixels).
THUMBNAIL_SIDE = 2048

# post-processing pool state (set once per worker process by _init_worker)
_WORKER: dict[str, Any] = {}


def model_mpp(model: Any) -> float:
    """µm/px the model was trained at: ``config.mpp``, or 0.25 for checkpoints without it."""
    value = getattr(getattr(model, "config", None), "mpp", None)
    return float(value) if value else DEFAULT_MODEL_MPP


def _init_worker(post_process, id2label, level0_per_model, min_size) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(post_process=post_process, id2label=id2label, f=level0_per_model, min_size=min_size)


def _post_process(region, maps, num_labels, has_hv):
    """One region's nuclei; ``maps`` is the array, or ``(shared memory name, shape)`` in a pool worker."""
    start = time.perf_counter()
    shm = None
    if isinstance(maps, tuple):
        from multiprocessing import shared_memory

        # the parent owns the block and unlinks it; the worker only reads it (workers share the
        # parent's resource tracker, where attaching registers the name once more: a no-op)
        shm = shared_memory.SharedMemory(name=maps[0])
        maps = np.ndarray(maps[1], dtype=np.float32, buffer=shm.buf)
    try:
        records, cut = region_nuclei(
            maps,
            num_labels,
            has_hv,
            region.box,
            region.core,
            _WORKER["f"],
            _WORKER["id2label"],
            _WORKER["post_process"],
            _WORKER["min_size"],
        )
    finally:
        del maps
        if shm is not None:
            shm.close()
    for r in records:
        r["region"] = region.index
    return region.index, records, cut, time.perf_counter() - start


def _to_shared(maps: np.ndarray):
    """Copy a region's maps into shared memory (pickling 100s of MB through a pipe stalls the loop)."""
    from multiprocessing import shared_memory

    maps = np.ascontiguousarray(maps, dtype=np.float32)
    shm = shared_memory.SharedMemory(create=True, size=max(1, maps.nbytes))
    np.ndarray(maps.shape, dtype=np.float32, buffer=shm.buf)[...] = maps
    return shm, (shm.name, maps.shape)


def segment_slide(
    path: str | os.PathLike,
    model: Any,
    processor: Any = None,
    out_dir: str | os.PathLike = ".",
    name: str | None = None,
    mpp: float | None = None,
    tissue_mask: str | None = None,
    reader: str | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    region_size: int = 1024,
    margin: int = 96,
    chunk_regions: int = 16,
    batch_size: int = 8,
    workers: int = 2,
    postprocess_workers: int = 1,
    threads: int | None = None,
    min_size: int = 10,
    geojson_gzip: bool = True,
    progress: bool = True,
    max_chunks: int | None = None,
    select_chunks: Callable[[list[int]], set[int]] | None = None,
    sync: Callable[[], None] | None = None,
    finish: bool = True,
    label_map: bool = False,
) -> dict[str, Any]:
    """Segment every nucleus of one slide; returns the summary (also written as ``NAME_summary.json``).

    Args:
        path: the slide (any format a reader accepts, see :func:`pannuke_hf.slides.open_slide`).
        model: a segmentation model (eval mode, on its device; :func:`~pannuke_hf.slides.tiling.prepare_model`
            sets bf16 + channels_last on CUDA). Its ``config.mpp`` (default 0.25) is the resolution
            the slide is brought to.
        processor: its image processor (None: the UNet-FCN default).
        out_dir: folder of the outputs; ``name`` their stem (default: the slide's file name
            without extension).
        mpp: µm per level-0 pixel of the slide, overriding the metadata.
        tissue_mask: an image (non-zero = tissue) to use instead of the Otsu mask.
        reader: force a reader (``"openslide"``, ``"tifffile"``, ``"image"``).
        tile_size, overlap: the model windows (defaults as ``predict_instances``).
        region_size, margin: post-processing regions (model pixels): core side, margin each side.
        chunk_regions: regions per part file (the unit of resume).
        batch_size: windows per forward pass.
        workers: DataLoader reader processes (0: read in this process).
        postprocess_workers: post-processing processes (0: in this process).
        threads: torch CPU threads of this process (None: leave torch's setting); on a CPU
            shared with readers and post-processing, more threads than free cores slow it down.
        min_size: nuclei under this many model pixels are dropped.
        geojson_gzip: write ``NAME.geojson.gz`` (else ``NAME.geojson``).
        progress: show a progress bar (tiles, nuclei, ETA) on stderr.
        max_chunks: stop after this many chunks in this call (tests of resume); the slide is then
            not finished and the summary says ``"status": "partial"``.
        select_chunks, sync, finish: for processes sharing the slide
            (:func:`pannuke_hf.slides.distributed.segment_slide_shared` sets them):
            ``select_chunks(weights)`` gets the tissue regions of every chunk and returns the
            chunks this process does; ``sync()`` runs once this process's parts are written;
            ``finish=False`` returns then, leaving the final files to another process.
        label_map: also write ``NAME_labels.tiff``, the nuclei's classes as a pyramidal tiled
            TIFF at the slide's level-0 size (:func:`pannuke_hf.slides.label_map.write_label_map`).

    Raises:
        SlideError: the slide cannot be opened, has no µm/px (and none given), or the output
            folder cannot be written. A region that cannot be read is skipped and listed in the
            summary instead.
    """
    import torch

    start_all = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    path = os.fspath(path)
    name = name or slide_name(path)
    paths = output_paths(out_dir, name, geojson_gzip)
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        # a name of this process's own: processes sharing the slide probe the folder at once
        probe = Path(out_dir) / f".{name}.{os.getpid()}-{time.monotonic_ns()}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SlideError(f"{out_dir}: the output folder cannot be written ({err.strerror or err})") from err

    # 1. open the slide and decide the resolution
    slide = open_slide(path, reader)
    target_mpp = model_mpp(model)
    plan = plan_resolution(slide, target_mpp, mpp)
    f = plan.level0_per_model

    # 2. tissue
    t0 = time.perf_counter()
    tissue = (
        load_tissue_mask(tissue_mask, slide, plan.slide_mpp)
        if tissue_mask
        else detect_tissue(slide, plan.slide_mpp)
    )
    tissue_seconds = time.perf_counter() - t0

    # 3. regions, and the chunks earlier runs finished
    if processor is None:
        from ..models.unet_fcn import UNetFCNImageProcessor

        processor = UNetFCNImageProcessor()
    grid = RegionGrid.build(
        plan.model_width,
        plan.model_height,
        processor,
        model,
        tile_size,
        overlap,
        region_size,
        margin,
        chunk_regions,
    )
    chunks = grid.chunks()

    def has_tissue(index: int) -> bool:
        x0, y0, x1, y1 = grid.region(index).core
        return tissue.touches(x0 * f, y0 * f, x1 * f, y1 * f)

    done = done_chunks(paths["parts"])
    mine = None
    if select_chunks is not None:
        mine = select_chunks([sum(has_tissue(i) for i in chunk) for chunk in chunks])
    todo_chunks = [c for c in range(len(chunks)) if c not in done and (mine is None or c in mine)]
    if max_chunks is not None:
        todo_chunks = todo_chunks[:max_chunks]
    regions_todo: list[int] = []
    skipped_of: dict[int, int] = {}
    windows_of: dict[int, int] = {}
    for c in todo_chunks:
        kept = [i for i in chunks[c] if has_tissue(i)]
        skipped_of[c] = len(chunks[c]) - len(kept)
        windows_of[c] = sum(len(grid.region(i).windows) for i in kept)
        regions_todo += kept
    chunk_of = {i: c for c in todo_chunks for i in chunks[c]}
    remaining = {c: len(chunks[c]) - skipped_of[c] for c in todo_chunks}
    buffers: dict[int, dict[int, list]] = {c: {} for c in todo_chunks}
    info_of = {
        c: {
            "regions": len(chunks[c]),
            "skipped_no_tissue": skipped_of[c],
            "windows": windows_of[c],
            "failed": [],
            "cut": 0,
            "seconds": {"read": 0.0, "infer": 0.0, "post_process": 0.0, "write": 0.0},
        }
        for c in todo_chunks
    }

    def chunk_finished(c: int) -> None:
        t = time.perf_counter()
        regions = buffers.pop(c)
        records = [r for index in sorted(regions) for r in regions[index]]
        info_of[c]["nuclei"] = len(records)
        info_of[c]["seconds"]["write"] += time.perf_counter() - t
        write_part(paths["parts"], c, records, info_of[c])

    for c in todo_chunks:
        if remaining[c] == 0:
            chunk_finished(c)

    # 4. read -> infer -> post-process -> write parts
    predictor = WindowPredictor(model, processor, grid, batch_size)
    id2label = dict(getattr(model.config, "id2label", {}) or {})
    post_process = processor.post_process_instance_segmentation
    pool = None
    if postprocess_workers > 0 and regions_todo:
        # fork, as DataLoader workers on Linux: no re-import of the caller's script (spawn would
        # re-run a notebook cell or an unguarded script); the children never touch CUDA
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = cf.ProcessPoolExecutor(
            postprocess_workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(post_process, id2label, f, min_size),
        )
    else:
        _init_worker(post_process, id2label, f, min_size)
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
    bar = None
    if progress and regions_todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(regions_todo), unit="region", desc=name, dynamic_ncols=True)
    nuclei_so_far = 0
    in_flight: dict = {}  # future -> its shared memory block

    def collect(result) -> None:
        nonlocal nuclei_so_far
        index, records, cut, seconds = result
        c = chunk_of[index]
        buffers[c][index] = records
        info_of[c]["cut"] += cut
        info_of[c]["seconds"]["post_process"] += seconds
        nuclei_so_far += len(records)
        remaining[c] -= 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(nuclei=nuclei_so_far, refresh=False)
        if remaining[c] == 0:
            chunk_finished(c)

    def submit(finished) -> None:
        for region, maps in finished:
            if pool is None:
                collect(_post_process(region, maps, predictor.num_labels, predictor.has_hv))
            else:
                shm, handle = _to_shared(maps)
                del maps
                in_flight[
                    pool.submit(_post_process, region, handle, predictor.num_labels, predictor.has_hv)
                ] = shm
        # bound the maps waiting for the pool: memory stays flat
        while pool is not None and len(in_flight) > 2 * postprocess_workers:
            finished_now, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
            for fut in finished_now:
                release(fut)

    def release(fut) -> None:
        shm = in_flight.pop(fut)
        try:
            result = fut.result()
        finally:
            shm.close()
            shm.unlink()
        collect(result)

    try:
        if regions_todo:
            dataset = RegionDataset(path, reader, plan, grid, regions_todo)
            infer_before = 0.0
            batch_chunk = None
            for item in region_loader(dataset, workers):
                c = chunk_of[item["index"]]
                if c != batch_chunk:
                    # batches never mix chunks: a window's logits can depend on the batch it ran in,
                    # so this keeps them the same however chunks are shared out between processes
                    # or resumed (byte-identical outputs)
                    if batch_chunk is not None:
                        submit(predictor.flush())
                        info_of[batch_chunk]["seconds"]["infer"] += predictor.seconds - infer_before
                        infer_before = predictor.seconds
                    batch_chunk = c
                info_of[c]["seconds"]["read"] += item["seconds"]
                if item["error"] is not None:
                    info_of[c]["failed"].append(
                        {
                            "region": item["index"],
                            "error": item["error"],
                            "lost_pixels": item["lost_pixels"],
                            "unread": item["image"] is None,
                        }
                    )
                    if item["image"] is None:  # nothing of it could be read
                        collect((item["index"], [], 0, 0.0))
                        continue
                finished = predictor.add(grid.region(item["index"]), item["image"])
                info_of[c]["seconds"]["infer"] += predictor.seconds - infer_before
                infer_before = predictor.seconds
                submit(finished)
            submit(predictor.flush())
            for fut in cf.as_completed(list(in_flight)):
                release(fut)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for shm in in_flight.values():  # an interrupted run: free the blocks
            shm.close()
            shm.unlink()
        if bar is not None:
            bar.close()

    if sync is not None:
        sync()  # the other processes' parts are written too (or an error is raised)
    all_done = done_chunks(paths["parts"])
    summary: dict[str, Any] = {
        "slide": path,
        "name": name,
        "status": "partial" if len(all_done) < len(chunks) else "done",
        "reader": slide.format,
        "slide_width": slide.dimensions[0],
        "slide_height": slide.dimensions[1],
        "levels": [list(d) for d in slide.level_dimensions],
        "properties": slide.properties,
        "resolution": plan.to_dict(),
        "tissue_source": tissue.source,
        "tissue_mm2": tissue.area_mm2,
        "tiling": {
            "tile_size": grid.tile,
            "overlap": grid.overlap,
            "region_size": grid.region_size,
            "margin": grid.margin,
            "chunks": len(chunks),
            "regions": len(grid),
        },
    }
    if summary["status"] == "partial" or not finish:
        return summary
    # 5. finalize: stream the parts into the outputs
    infos = [all_done[c] for c in range(len(chunks))]
    seconds = {k: sum(i["seconds"][k] for i in infos) for k in ("read", "infer", "post_process", "write")}
    seconds["tissue"] = tissue_seconds
    failed = [fail for i in infos for fail in i["failed"]]
    unread = sum(1 for fail in failed if fail["unread"])
    regions_done = sum(i["regions"] - i["skipped_no_tissue"] for i in infos) - unread
    # lost pixels are counted in the regions' read boxes, which overlap: an upper bound
    lost_mm2 = sum(fail["lost_pixels"] for fail in failed) * (f * plan.slide_mpp / 1000.0) ** 2
    if failed and regions_done == 0:
        # nothing readable (a truncated or corrupt file): no outputs that look complete
        import shutil

        shutil.rmtree(paths["parts"], ignore_errors=True)
        raise SlideError(
            f"{path}: no region could be read, the file is truncated or corrupt ({failed[0]['error']})"
        )
    summary.update(
        regions_done=regions_done,
        regions_skipped_no_tissue=sum(i["skipped_no_tissue"] for i in infos),
        regions_failed=len(failed),
        failed=failed[:100],
        failed_area_mm2=lost_mm2,
        nuclei_cut_by_margin=sum(i["cut"] for i in infos),
        seconds=seconds,
    )
    if summary["tissue_mm2"] == 0:
        summary["note"] = "no tissue found: the outputs are empty"
    # the thumbnail: a low level, tissue outline on top
    import cv2

    W0, H0 = slide.dimensions
    scale = min(1.0, THUMBNAIL_SIDE / max(W0, H0))
    level = max(i for i, d in enumerate(slide.level_downsamples) if d <= 1 / scale or i == 0)
    lw, lh = slide.level_dimensions[level]
    tw, th = max(1, int(W0 * scale)), max(1, int(H0 * scale))
    thumb = np.full((th, tw, 3), 255, np.uint8)  # no small level, or an unreadable one: blank
    if lw * lh <= 64e6:
        try:
            thumb = cv2.resize(slide.read_region(0, 0, level, lw, lh), (tw, th), interpolation=cv2.INTER_AREA)
        except SlideError:
            slide.reopen()
    contours, _ = cv2.findContours(tissue.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = tissue.level0_per_pixel
    outline = [c.reshape(-1, 2) * np.array([sx * scale, sy * scale]) for c in contours]
    slide.close()

    def write_labels(summary: dict[str, Any]) -> None:
        from .label_map import write_label_map

        t = time.perf_counter()
        write_label_map(paths["cells"], W0, H0, paths["label_map"], mpp=plan.slide_mpp)
        summary["label_map"] = paths["label_map"].name
        summary["seconds"]["label_map"] = time.perf_counter() - t

    labels = write_labels if label_map else None
    summary = finalize(paths, len(chunks), plan.slide_mpp, thumb, scale, outline, summary, labels)
    total = time.perf_counter() - start_all
    summary["seconds"]["total_this_run"] = total
    # over all chunks, whichever process or run did them: the same figure however the slide was shared
    summary["windows"] = sum(i.get("windows", 0) for i in infos)
    summary["windows_this_run"] = predictor.windows  # this process, this run (resume, sharing)
    summary["tiles_per_second"] = summary["windows"] / seconds["infer"] if seconds["infer"] > 0 else None
    summary["seconds_per_mm2"] = total / summary["tissue_mm2"] if summary["tissue_mm2"] > 0 else None
    # rewrite with the totals (the file is small; the other outputs are already in place)
    import json

    tmp = paths["summary"].with_name(paths["summary"].name + ".partial")
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, paths["summary"])
    import shutil

    shutil.rmtree(paths["parts"], ignore_errors=True)
    return summary
