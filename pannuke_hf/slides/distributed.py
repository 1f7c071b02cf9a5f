"""Slides over many processes: one per GPU (or CPU process), on one or many machines.

Launch any slide run with ``torchrun`` or ``accelerate launch``; each process reads the variables
they set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and joins one
``torch.distributed`` process group (:func:`init_processes`): NCCL when the processes run on
CUDA, gloo on the CPU. Each process uses the GPU of its ``LOCAL_RANK``.

How the work is shared (:func:`segment_slide_shared`, used by :func:`pannuke_hf.slides.cohort.segment_cohort`):

* the **chunks of a slide** (the unit of resume, see :mod:`pannuke_hf.slides.tiling`) are dealt
  out by :func:`share_chunks`: in chunk order, each chunk to the process with the least tissue
  so far. Every process computes the same deal from the slide alone (no message needed, so no
  process can start writing before another has looked at what is done);
* every process writes the parts of its own chunks into the shared output folder; then all
  processes meet once (:meth:`SlideRound.work_done`, which also tells every process whether
  another one failed), process 0 streams all parts into the final files exactly as one
  process would, and sends the slide's summary (or its error) to the others.

The output folder must be one folder seen by every process (on several machines, a shared file
system): :func:`check_shared_folder` says so in one line when it is not. A process killed
mid-slide loses only its unfinished chunks: ``torchrun`` stops the others, and a re-run (with any
number of processes) finds the finished parts and does the rest.

Without the launcher variables everything here is a single process and costs nothing.
"""

from __future__ import annotations

import datetime
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT",
    "Processes",
    "SlideRound",
    "check_shared_folder",
    "init_processes",
    "launched",
    "segment_slide_shared",
    "share_chunks",
]

#: How long a process waits for the others at a meeting point (a slide's slowest share plus
#: process 0's final write; long, because ``torchrun`` stops everyone when a process dies).
DEFAULT_TIMEOUT = datetime.timedelta(hours=4)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` / ``accelerate launch`` with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class Processes:
    """This process's place among the processes of a run (one process: rank 0 of 1).

    Attributes:
        rank: 0 .. world_size - 1; process 0 writes the final files.
        world_size: number of processes.
        local_rank: index on this machine (which GPU to use).
        device: the device this process runs the model on.
        backend: ``"nccl"``, ``"gloo"`` or None (one process).
        owns_group: this object created the process group (and :meth:`close` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Process 0: the one that merges, prints and writes the cohort table."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _dist(self):
        import torch.distributed as dist

        return dist

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            self.all_gather(None)

    def all_gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._dist().all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Process ``src``'s ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        self._dist().broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        """Leave the process group if this object created it."""
        if self.owns_group:
            dist = self._dist()
            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def _device_for(device: str | None, local_rank: int, world_size: int) -> str:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        return f"cuda:{local_rank}"  # one GPU per process on each machine
    return device


def init_processes(device: str | None = None, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> Processes:
    """Join the process group the launcher describes (or stay one process when there is none).

    Args:
        device: ``None`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` (each process then
            takes ``cuda:LOCAL_RANK``) or an explicit ``"cuda:N"``.
        timeout: how long a meeting point waits for the slowest process.

    Returns:
        The :class:`Processes` of this process. A group that already exists (``accelerate`` in a
        notebook, a training script) is reused and left open by :meth:`Processes.close`.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = _device_for(device, local_rank, world)
        return Processes(rank, world, local_rank, dev, dist.get_backend(), owns_group=False)
    if not launched():
        return Processes(device=_device_for(device, 0, 1))
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device_for(device, local_rank, world)
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(dev))
    backend = "nccl" if cuda else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "timeout": timeout}
    if cuda:
        kwargs["device_id"] = torch.device(dev)
    dist.init_process_group(**kwargs)
    return Processes(rank, world, local_rank, dev, backend, owns_group=True)


def check_shared_folder(processes: Processes, folder: str | os.PathLike) -> None:
    """Make the output folder and check that it can be written and that every process sees it.

    Raises:
        OSError: on every process, naming the folder: it cannot be created or written, or some
            process does not see the file process 0 wrote there (several machines without a
            shared file system).
    """
    folder = Path(folder)
    token = processes.broadcast(uuid.uuid4().hex if processes.is_main else None)
    probe = folder / f".pannuke-hf-shared-{token}"
    error = None
    if processes.is_main:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe.write_text(token)
        except OSError as err:
            error = f"{folder}: the output folder cannot be written ({err.strerror or err})"
    error = processes.broadcast(error)
    if error:
        raise OSError(error)  # every process: process 0 sent it
    if not processes.distributed:
        probe.unlink(missing_ok=True)
        return
    seen = processes.all_gather(error is None and probe.is_file())
    if processes.is_main:
        probe.unlink(missing_ok=True)
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        raise OSError(
            f"{folder}: process(es) {', '.join(map(str, blind))} do not see this folder's files; on several "
            "machines --out must be a folder all of them share (NFS or the like)"
        )


def share_chunks(weights: Sequence[int], world_size: int) -> list[int]:
    """The process that does each chunk: in chunk order, the one with the least work so far.

    ``weights[c]`` is chunk ``c``'s tissue regions (its work). Ties go to the lower rank; chunks
    without tissue cost nothing and go round-robin. The deal depends only on the weights, so
    every process computes the same one.
    """
    load = [0] * world_size
    owners = []
    for c, w in enumerate(weights):
        if w <= 0:
            owners.append(c % world_size)
            continue
        rank = min(range(world_size), key=lambda r: (load[r], r))
        load[rank] += w
        owners.append(rank)
    return owners


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class SlideRound:
    """The meeting points of one slide shared between processes (every process calls them in the same order).

    1. :meth:`work_done` (once): after a process wrote its parts, or failed; tells every process
       whether any failed.
    2. :meth:`result`: process 0's summary (or error) on every process.
    """

    def __init__(self, processes: Processes) -> None:
        self.processes = processes
        self.errors: list[str | None] | None = None

    def select(self, weights: Sequence[int]) -> set[int]:
        """The chunks this process does (see :func:`share_chunks`)."""
        owners = share_chunks(weights, self.processes.world_size)
        return {c for c, r in enumerate(owners) if r == self.processes.rank}

    def work_done(self, error: str | None = None) -> None:
        """Meet after the parts are written. Raises (on every process) when some process failed."""
        from .reading import SlideError

        if self.errors is None:
            self.errors = self.processes.all_gather(error)
        failed = [(rank, e) for rank, e in enumerate(self.errors) if e]
        if failed:
            rank, message = failed[0]
            raise SlideError(message if rank == self.processes.rank else f"{message} (in process {rank})")

    def result(self, summary: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
        """Process 0's outcome on every process: its summary, or a raised ``SlideError``."""
        from .reading import SlideError

        outcome = self.processes.broadcast((summary, error) if self.processes.is_main else None)
        summary0, error0 = outcome
        if error0 is not None:
            raise SlideError(error0)
        return summary0


def segment_slide_shared(
    path: str | os.PathLike,
    model: Any,
    processes: Processes,
    segment: Callable[..., dict[str, Any]] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`~pannuke_hf.slides.pipeline.segment_slide` with the slide's chunks shared between processes.

    Every process must call it for the same slide with the same arguments; every process returns
    the same summary (written by process 0), or raises the same ``SlideError`` (one line; when
    another process failed, the message says which). With one process it is ``segment_slide``.
    """
    if segment is None:
        from .pipeline import segment_slide as segment
    if not processes.distributed:
        return segment(path, model, **kwargs)
    kwargs["progress"] = bool(kwargs.get("progress", True)) and processes.is_main
    meeting = SlideRound(processes)
    summary = error = None
    try:
        summary = segment(path, model, select_chunks=meeting.select, sync=meeting.work_done,
                          finish=processes.is_main, **kwargs)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - every failure must reach the meeting points, then re-raised
        error = _one_line(err)
        if meeting.errors is None:
            try:
                meeting.work_done(error)
            except Exception:  # noqa: BLE001 - our own error, re-raised below as process 0's
                pass
    return meeting.result(summary if processes.is_main else None, error if processes.is_main else None)
