"""Cohorts: many slides in one call, one table of results, failures listed and the rest carried on.

:func:`segment_cohort` takes *sources*: slide files, folders, glob patterns and CSV files
(:func:`resolve_sources` says what each becomes), segments every slide with
:func:`~pannuke_hf.slides.pipeline.segment_slide` (its outputs as for one slide, ``NAME*`` in
``out_dir``) and writes ``cohort_summary.parquet`` and ``cohort_summary.csv`` there: one row per
slide (:func:`cohort_columns`). A slide that fails is a row with ``status = "failed"`` and its
one-line error; the next slide goes on. A slide whose ``NAME_summary.json`` exists was finished by
an earlier run: it is not run again (``status = "skipped"``, its figures read from that summary);
a slide an earlier run left half done resumes from its finished chunks.

Under ``torchrun`` / ``accelerate launch`` (see :mod:`pannuke_hf.slides.distributed`) every
process calls :func:`segment_cohort` with the same arguments. ``shard="chunks"`` (default): all
processes work on one slide at a time, its chunks shared out, process 0 merging, so each slide
is done as soon as possible and a cohort of one slide uses every GPU. ``shard="slides"``: each
process takes whole slides (slide ``i`` goes to process ``i mod N``) and nobody waits for anyone
until the end: best for cohorts of many more slides than processes. Either way the files are
the same as one process writes, and process 0 writes the table.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COHORT_CSV",
    "COHORT_PARQUET",
    "SlideSource",
    "SourceError",
    "cohort_columns",
    "resolve_sources",
    "segment_cohort",
    "write_cohort_summary",
]

#: The cohort table, in ``out_dir``.
COHORT_PARQUET = "cohort_summary.parquet"
COHORT_CSV = "cohort_summary.csv"

#: Files beside slides that are not slides: the generator's true nuclei, our label maps.
_NOT_SLIDES = ("_truth.tiff", "_labels.tiff")


class SourceError(ValueError):
    """A source that names no slide (empty folder, glob matching nothing, CSV without a slide column)."""


@dataclass(frozen=True)
class SlideSource:
    """One slide of a cohort: its file, the stem of its outputs, an optional µm/px override."""

    path: str
    name: str
    mpp: float | None = None


def slide_name(path: str | os.PathLike) -> str:
    """The stem of a slide's outputs (as :func:`~pannuke_hf.slides.writing.slide_name`)."""
    from .writing import slide_name as name_of

    return name_of(path)


def _folder_extensions() -> tuple[str, ...]:
    from .readers import openslide_reader, tiff_reader

    # DICOM slides are folders of .dcm files (one slide, many files): list them in a CSV instead
    return tuple(sorted({e for e in (*openslide_reader.EXTENSIONS, *tiff_reader.EXTENSIONS) if e != ".dcm"}))


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _not_a_slide(path: str) -> bool:
    return path.lower().endswith(_NOT_SLIDES)


def _read_csv(path: Path) -> list[SlideSource]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot be read ({getattr(err, 'strerror', None) or err})") from err
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    column = next((c for c in ("slide", "path") if c in fields), None)
    if column is None:
        raise SourceError(
            f"{path}: a cohort CSV needs a header row with a 'slide' (or 'path') column; optional "
            f"columns 'name' and 'mpp' (found: {', '.join(fields) or 'no header'})"
        )
    out = []
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not any(row.values()):
            continue
        where = f"{path}, line {line}"
        if not row.get(column):
            raise SourceError(f"{where}: empty {column!r}")
        slide = Path(row[column]).expanduser()
        if not slide.is_absolute():
            slide = path.parent / slide  # relative to the CSV, not to the current folder
        mpp = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
            except ValueError:
                mpp = float("nan")
            if not mpp > 0:
                raise SourceError(f"{where}: mpp must be a pixel size in µm > 0, got {row['mpp']!r}")
        out.append(SlideSource(os.fspath(slide), row.get("name") or slide_name(slide), mpp))
    if not out:
        raise SourceError(f"{path}: the CSV lists no slide")
    return out


def resolve_sources(sources: Iterable[str | os.PathLike]) -> list[SlideSource]:
    """The slides named by ``sources``, in order, each once.

    * a **folder**: its files with a slide extension (OpenSlide and pyramidal TIFF formats;
      not ``.dcm``, PNG or JPEG), sorted, not recursive; ``*_truth.tiff`` and ``*_labels.tiff``
      (generated truth, label maps) are not slides;
    * a **glob** (``*``, ``?``, ``[``; ``**`` recursive): the files it matches, sorted (same
      exclusions);
    * a **.csv** file: a header row with ``slide`` (or ``path``), optional ``name`` (output stem)
      and ``mpp`` (µm/px of that slide); relative paths are relative to the CSV's folder;
    * anything else: one slide file (a missing one fails as a slide, the others go on).

    Raises:
        SourceError: a folder without slides, a glob matching nothing, a CSV without a slide
            column or rows, or two slides whose outputs would have the same name.
    """
    found: list[SlideSource] = []
    for source in sources:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if path.is_dir():
            exts = _folder_extensions()
            files = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.name.lower().endswith(exts) and not _not_a_slide(p.name)
            )
            if not files:
                raise SourceError(f"{text}: the folder holds no slide ({' '.join(exts)})")
            found += [SlideSource(os.fspath(p), slide_name(p)) for p in files]
        elif path.is_file() and path.suffix.lower() == ".csv":
            found += _read_csv(path)
        elif not path.exists() and _is_glob(text):
            files = sorted(
                p
                for p in glob.glob(os.path.expanduser(text), recursive=True)
                if os.path.isfile(p) and not _not_a_slide(p)
            )
            if not files:
                raise SourceError(f"{text}: the pattern matches no file")
            found += [SlideSource(p, slide_name(p)) for p in files]
        else:
            found.append(SlideSource(text, slide_name(text)))
    unique: list[SlideSource] = []
    seen_paths: set[str] = set()
    by_name: dict[str, str] = {}
    for s in found:
        key = os.path.realpath(s.path)
        if key in seen_paths:
            continue  # the same file twice (a folder and a glob): once
        seen_paths.add(key)
        if s.name in by_name:
            raise SourceError(
                f"two slides would write the same outputs {s.name}*: {by_name[s.name]} and {s.path}; "
                "give them different names in a CSV's 'name' column"
            )
        by_name[s.name] = s.path
        unique.append(s)
    return unique


def _names_many(source: Any) -> bool:
    """Whether one source names a cohort (a folder, a glob or a CSV) rather than one slide file."""
    if isinstance(source, SlideSource):
        return False
    text = os.fspath(source)
    path = Path(text).expanduser()
    return path.is_dir() or path.suffix.lower() == ".csv" or (not path.exists() and _is_glob(text))


def _class_columns(model: Any) -> list[tuple[str, str]]:
    """(column, class name in summaries) of each nucleus class of the model, in label order."""
    from ..constants import BACKGROUND_LABEL, full_class_name

    id2label = dict(getattr(getattr(model, "config", None), "id2label", {}) or {})
    out = []
    for key in sorted(id2label, key=lambda k: int(k)):
        if int(key) == BACKGROUND_LABEL:
            continue
        short = str(id2label[key])
        out.append((f"nuclei_{short.replace(' ', '_').replace('/', '_')}", full_class_name(short)))
    return out


def cohort_columns(model: Any) -> list[str]:
    """Columns of the cohort table for ``model``'s classes.

    ``slide`` (the file), ``name`` (stem of its outputs), ``status`` (``done`` this run,
    ``skipped``: finished by an earlier run, ``failed``, ``partial``), ``error`` (one line, failed
    slides), ``tissue_mm2``, ``nuclei``, ``nuclei_<class>`` per class, ``nuclei_per_mm2`` (of
    tissue), ``regions_failed`` (unreadable regions skipped inside the slide), ``seconds`` (wall
    seconds of the run that finished the slide, or until it failed).
    """
    return ["slide", "name", "status", "error", "tissue_mm2", "nuclei", *(c for c, _ in _class_columns(model)),
            "nuclei_per_mm2", "regions_failed", "seconds"]  # fmt: skip


def _row(source: SlideSource, model: Any, status: str, summary: dict[str, Any] | None = None,
         error: str | None = None, seconds: float | None = None) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = dict.fromkeys(cohort_columns(model))
    row.update(slide=source.path, name=source.name, status=status, error=error, seconds=seconds)
    if summary:
        if summary.get("status") == "partial":
            row["status"] = "partial"
        per_class = summary.get("nuclei_per_class") or {}
        row.update(
            tissue_mm2=summary.get("tissue_mm2"),
            nuclei=summary.get("nuclei"),
            nuclei_per_mm2=summary.get("nuclei_per_mm2"),
            regions_failed=summary.get("regions_failed"),
        )
        if row["nuclei"] is not None:
            for column, name in _class_columns(model):
                row[column] = int(per_class.get(name, 0))
    return row


def write_cohort_summary(
    rows: list[dict[str, Any]], out_dir: str | os.PathLike, columns: list[str]
) -> tuple[Path, Path]:
    """Write ``cohort_summary.parquet`` and ``.csv`` (each under a temporary name, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    types = {"slide": pa.string(), "name": pa.string(), "status": pa.string(), "error": pa.string(),
             "tissue_mm2": pa.float64(), "nuclei_per_mm2": pa.float64(), "seconds": pa.float64()}  # fmt: skip
    schema = pa.schema([(c, types.get(c, pa.int64())) for c in columns])
    table = pa.table({c: [r.get(c) for r in rows] for c in columns}, schema=schema)
    paths = out / COHORT_PARQUET, out / COHORT_CSV
    for path, write in (
        (paths[0], lambda p: pq.write_table(table, p)),
        (paths[1], lambda p: _write_csv(p, rows, columns)),
    ):
        partial = path.with_name(path.name + ".partial")
        try:
            write(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    return paths


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in rows:
            writer.writerow(
                [
                    "" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                    for c in columns
                ]
            )


def _one_line(err: BaseException) -> str:
    from .reading import SlideError

    text = (str(err).strip().splitlines() or [""])[0]
    if isinstance(err, SlideError | OSError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def segment_cohort(
    sources: Iterable[str | os.PathLike] | list[SlideSource],
    model: Any,
    processor: Any = None,
    out_dir: str | os.PathLike = ".",
    processes: Any = None,
    shard: str = "chunks",
    mpp: float | None = None,
    geojson_gzip: bool = True,
    progress: bool = True,
    on_slide: Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None,
    table: bool | None = None,
    **slide_kwargs: Any,
) -> list[dict[str, Any]]:
    """Segment every slide of a cohort; returns the table's rows (on every process).

    Args:
        sources: files, folders, globs, CSVs (see :func:`resolve_sources`) or resolved
            :class:`SlideSource` objects.
        model, processor: as for :func:`~pannuke_hf.slides.pipeline.segment_slide` (the model on
            this process's device).
        out_dir: the per-slide outputs and ``cohort_summary.parquet`` / ``.csv``.
        processes: a :class:`~pannuke_hf.slides.distributed.Processes` (``init_processes()``);
            None: this process alone.
        shard: ``"chunks"`` (every process on each slide) or ``"slides"`` (whole slides per
            process); see the module docstring.
        mpp: µm/px for slides whose CSV row gives none (overrides their metadata).
        on_slide: called with each row and the slide's summary (None when it failed) as the slide
            ends, on the process that knows it (process 0 with ``shard="chunks"``, the slide's
            process with ``"slides"``), e.g. to print it.
        table: write ``cohort_summary.parquet`` / ``.csv``; None: unless ``sources`` is one
            slide file (a cohort is several sources, or a folder, glob or CSV).
        slide_kwargs: passed to ``segment_slide`` (``region_size``, ``workers``, ...).

    Raises:
        SourceError: the sources name no slide (nothing is run).
        OSError: ``out_dir`` cannot be written (or is not one folder for all processes).

    Failures of single slides are not raised: they are rows with ``status = "failed"`` (unless
    ``PANNUKE_HF_TRACEBACK`` is set: then the first one is raised with its traceback).
    """
    from .distributed import Processes, check_shared_folder, segment_slide_shared
    from .pipeline import segment_slide
    from .writing import output_paths

    if shard not in ("chunks", "slides"):
        raise ValueError(f"shard must be 'chunks' or 'slides', got {shard!r}")
    procs = processes or Processes()
    # process 0 lists the slides (one listing, even if files appear meanwhile) and tells the others
    listing: tuple[list[SlideSource] | None, str | None, bool] = (None, None, True)
    if procs.is_main:
        given = list(sources)
        if table is None:
            table = len(given) != 1 or _names_many(given[0])
        try:
            listing = (
                (
                    given
                    if given and all(isinstance(s, SlideSource) for s in given)
                    else resolve_sources(given)
                ),
                None,
                table,
            )
        except SourceError as err:
            listing = (None, str(err), table)
    slides, problem, table = procs.broadcast(listing)
    if problem:
        raise SourceError(problem)
    check_shared_folder(procs, out_dir)  # writable, and the same folder for every process
    columns = cohort_columns(model)
    rows: list[dict[str, Any] | None] = [None] * len(slides)
    by_slides = shard == "slides" and procs.distributed

    def report(row: dict[str, Any], summary: dict[str, Any] | None) -> None:
        if on_slide is not None:
            on_slide(row, summary)

    for i, source in enumerate(slides):
        mine = (i % procs.world_size == procs.rank) if by_slides else True
        if not mine:
            continue
        summary_path = output_paths(out_dir, source.name, geojson_gzip)["summary"]
        done_before = summary_path.is_file()
        if not by_slides:
            done_before = procs.broadcast(done_before)  # one decision for all processes
        if done_before:
            import json

            old = None
            try:
                old = json.loads(summary_path.read_text())
                row = _row(
                    source, model, "skipped", old, seconds=(old.get("seconds") or {}).get("total_this_run")
                )
            except (OSError, ValueError) as err:
                row = _row(
                    source,
                    model,
                    "failed",
                    error=f"{summary_path}: unreadable summary ({_one_line(err)}); delete it to run the slide again",
                )
            rows[i] = row
            if procs.is_main or by_slides:
                report(row, old)
            continue
        start = time.perf_counter()
        summary = None
        kwargs = dict(slide_kwargs, processor=processor, out_dir=out_dir, name=source.name,
                      mpp=source.mpp if source.mpp is not None else mpp, geojson_gzip=geojson_gzip)  # fmt: skip
        try:
            if by_slides:
                summary = segment_slide(source.path, model, progress=progress, **kwargs)
            else:
                summary = segment_slide_shared(source.path, model, procs, progress=progress, **kwargs)
            took = (summary.get("seconds") or {}).get("total_this_run", time.perf_counter() - start)
            row = _row(source, model, "done", summary, seconds=took)
        except Exception as err:  # noqa: BLE001 - a failed slide is a row; the cohort goes on
            from ..errors import traceback_requested

            if traceback_requested():
                raise  # PANNUKE_HF_TRACEBACK: the first failure stops the cohort with its traceback
            summary = None
            row = _row(source, model, "failed", error=_one_line(err), seconds=time.perf_counter() - start)
        rows[i] = row
        if procs.is_main or by_slides:
            report(row, summary)
        if table and procs.is_main and not by_slides:
            write_cohort_summary([r for r in rows if r is not None], out_dir, columns)  # so far
    if by_slides:
        gathered = procs.all_gather(rows)
        rows = [next((g[i] for g in gathered if g[i] is not None), None) for i in range(len(slides))]
    final = [r for r in rows if r is not None]
    if table and procs.is_main:
        write_cohort_summary(final, out_dir, columns)
    return final
