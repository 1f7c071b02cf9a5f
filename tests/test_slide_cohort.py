"""Cohorts of slides (pannuke_hf.slides.cohort): folder / glob / CSV sources, the cohort table, a
failing slide listed while the others finish, re-runs that skip finished slides and resume
partial ones. Slides are a few hundred pixels; the model finds nuclei by colour."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_slide import OracleModel, plain_processor

SLIDE_KWARGS = dict(region_size=256, margin=48, workers=0, postprocess_workers=0, threads=1, progress=False)


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------


def test_folder_glob_and_file_sources(tmp_path):
    from pannuke_hf.slides.cohort import resolve_sources

    for name in ("b.svs", "a.tiff", "c.ndpi", "a_truth.tiff", "x_labels.tiff", "notes.txt", "d.png", "e.dcm"):
        touch(tmp_path / "cohort" / name)
    touch(tmp_path / "cohort" / "sub" / "f.svs")
    found = resolve_sources([tmp_path / "cohort"])
    # slide extensions only, sorted, not recursive; truth and label maps are not slides
    assert [s.name for s in found] == ["a", "b", "c"]
    assert [Path(s.path).name for s in found] == ["a.tiff", "b.svs", "c.ndpi"]
    globbed = resolve_sources([str(tmp_path / "cohort" / "**" / "*.svs")])
    assert [Path(s.path).name for s in globbed] == ["b.svs", "f.svs"]
    # a file given twice (folder + glob) once; a missing plain file stays (it fails as a slide)
    both = resolve_sources([tmp_path / "cohort", str(tmp_path / "cohort" / "*.svs"), tmp_path / "gone.svs"])
    assert [s.name for s in both] == ["a", "b", "c", "gone"]


def test_csv_source(tmp_path):
    from pannuke_hf.slides.cohort import resolve_sources

    touch(tmp_path / "data" / "one.svs")
    (tmp_path / "lists").mkdir()
    table = tmp_path / "lists" / "cohort.csv"
    table.write_text("Slide,name,mpp\n../data/one.svs,first,\n/abs/two.svs,,0.5\n\n")
    found = resolve_sources([table])
    # relative to the CSV's folder, not the current one
    assert Path(found[0].path).resolve() == (tmp_path / "data" / "one.svs").resolve()
    assert (found[0].name, found[0].mpp) == ("first", None)
    assert (found[1].path, found[1].name, found[1].mpp) == ("/abs/two.svs", "two", 0.5)


@pytest.mark.parametrize(
    "source, content, message",
    [
        ("empty", None, "holds no slide"),
        ("nothing-*.svs", None, "matches no file"),
        ("x.csv", "file\na.svs\n", "'slide'"),
        ("y.csv", "slide,mpp\na.svs,-1\n", "line 2: mpp"),
        ("z.csv", "slide\n", "lists no slide"),
        ("w.csv", "slide\n/p/s.svs\n/q/s.svs\n", "same outputs s\\*"),
    ],
)
def test_sources_that_name_no_slide_are_one_line_errors(tmp_path, source, content, message):
    from pannuke_hf.slides.cohort import SourceError, resolve_sources

    if source == "empty":
        (tmp_path / source).mkdir()
    elif content is not None:
        (tmp_path / source).write_text(content)
    with pytest.raises(SourceError, match=message) as info:
        resolve_sources([str(tmp_path / source)])
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# running a cohort
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two generated slides and a truncated one, in one folder."""
    from pannuke_hf.slides import make_synthetic_slide

    folder = tmp_path_factory.mktemp("cohort")
    make_synthetic_slide(folder / "a.tiff", 600, 420, mpp=0.25, seed=1, tissue_fraction=0.9, workers=2)
    make_synthetic_slide(folder / "b.tiff", 420, 500, mpp=0.5, seed=2, tissue_fraction=0.9, workers=2)
    data = (folder / "a.tiff").read_bytes()
    (folder / "broken.svs").write_bytes(data[: len(data) // 3])  # truncated
    return folder


def _calls(monkeypatch):
    """Count segment_slide calls by slide name, and the chunks each writes."""
    import pannuke_hf.slides.cohort  # noqa: F401
    from pannuke_hf.slides import pipeline

    calls: dict[str, int] = {}
    parts: list[int] = []
    real_segment, real_write = pipeline.segment_slide, pipeline.write_part

    def segment(path, *args, **kwargs):
        calls[Path(path).stem] = calls.get(Path(path).stem, 0) + 1
        return real_segment(path, *args, **kwargs)

    def write(parts_dir, chunk, *args, **kwargs):
        parts.append(chunk)
        return real_write(parts_dir, chunk, *args, **kwargs)

    monkeypatch.setattr(pipeline, "segment_slide", segment)
    monkeypatch.setattr(pipeline, "write_part", write)
    return calls, parts


def test_a_failing_slide_is_listed_and_the_others_finish(cohort, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from pannuke_hf.slides.cohort import segment_cohort

    calls, _ = _calls(monkeypatch)
    seen = []
    rows = segment_cohort([cohort], OracleModel(), plain_processor(), out_dir=tmp_path,
                          on_slide=lambda row, summary: seen.append(row["name"]), **SLIDE_KWARGS)  # fmt: skip
    assert [r["name"] for r in rows] == seen == ["a", "b", "broken"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["a"]["status"] == by_name["b"]["status"] == "done"
    broken = by_name["broken"]
    assert broken["status"] == "failed" and "broken.svs" in broken["error"] and "\n" not in broken["error"]
    assert broken["nuclei"] is None and not (tmp_path / "broken_summary.json").exists()
    # the table: one row per slide, its figures those of the slide's own summary
    table = pq.read_table(tmp_path / "cohort_summary.parquet").to_pylist()
    with open(tmp_path / "cohort_summary.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [r["name"] for r in table] == [r["name"] for r in lines] == ["a", "b", "broken"]
    for name in ("a", "b"):
        summary = json.loads((tmp_path / f"{name}_summary.json").read_text())
        row = table[["a", "b"].index(name)]
        assert row["nuclei"] == summary["nuclei"] > 20
        assert row["tissue_mm2"] == pytest.approx(summary["tissue_mm2"]) and row["tissue_mm2"] > 0
        assert row["nuclei_per_mm2"] == pytest.approx(summary["nuclei"] / summary["tissue_mm2"])
        per_class = [row[c] for c in row if c.startswith("nuclei_") and c != "nuclei_per_mm2"]
        assert (
            sum(per_class) == row["nuclei"] and row["nuclei_neoplastic"] == row["nuclei"]
        )  # the oracle's class
        assert row["seconds"] > 0 and row["error"] is None
        assert int(lines[["a", "b"].index(name)]["nuclei"]) == row["nuclei"]
    assert table[2]["error"] == broken["error"] and lines[2]["status"] == "failed"
    assert calls == {"a": 1, "b": 1, "broken": 1}

    # a re-run skips the finished slides (not run again, files untouched) and retries the failed one
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("[ab]*")}
    calls.clear()
    again = segment_cohort([cohort], OracleModel(), plain_processor(), out_dir=tmp_path, **SLIDE_KWARGS)
    assert [r["status"] for r in again] == ["skipped", "skipped", "failed"]
    assert calls == {"broken": 1}
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("[ab]*")} == before
    # skipped rows carry the figures of the run that finished them
    for old, new in zip(rows[:2], again[:2]):
        assert {k: v for k, v in old.items() if k != "status"} == {
            k: v for k, v in new.items() if k != "status"
        }


def test_a_partial_slide_resumes_from_its_parts(cohort, tmp_path, monkeypatch):
    from pannuke_hf.slides.cohort import segment_cohort
    from pannuke_hf.slides.pipeline import segment_slide

    kwargs = dict(SLIDE_KWARGS, chunk_regions=1)
    whole = segment_cohort(
        [cohort / "a.tiff"], OracleModel(), plain_processor(), out_dir=tmp_path / "whole", **kwargs
    )
    # an earlier run stopped after two of the slide's chunks
    partial = segment_slide(cohort / "a.tiff", OracleModel(), plain_processor(), out_dir=tmp_path / "resumed",
                            max_chunks=2, **kwargs)  # fmt: skip
    assert partial["status"] == "partial"
    assert not (tmp_path / "whole" / "cohort_summary.csv").exists()  # one slide file: no cohort table
    chunks = partial["tiling"]["chunks"]
    assert chunks > 2
    _, parts = _calls(monkeypatch)
    resumed = segment_cohort(
        [cohort / "a.tiff"], OracleModel(), plain_processor(), out_dir=tmp_path / "resumed", **kwargs
    )
    assert resumed[0]["status"] == "done" and resumed[0]["nuclei"] == whole[0]["nuclei"]
    assert sorted(parts) == list(range(2, chunks))  # only the chunks the first run had not done
    for name in ("a_cells.parquet", "a.geojson.gz", "a_thumbnail.png"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name


def test_cli_takes_a_csv_and_exits_1_when_a_slide_failed(cohort, tmp_path, capsys):
    from pannuke_hf.cli import main

    model = tmp_path / "model"
    from _models import tiny_unet_fcn

    tiny_unet_fcn().save_pretrained(model)
    plain_processor().save_pretrained(model)
    table = tmp_path / "cohort.csv"
    table.write_text(f"slide,name\n{cohort / 'a.tiff'},bee\n{cohort / 'broken.svs'},\n")
    argv = ["slide", str(table), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--region-size", "256", "--margin", "48", "--workers", "0", "--postprocess-workers", "0", "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "pannuke-hf slide: error:" in captured.err and "broken.svs" in captured.err
    assert "2 slides: 1 done, 1 failed" in captured.out
    assert (tmp_path / "out" / "bee_summary.json").is_file()
    lines = list(csv.DictReader(open(tmp_path / "out" / "cohort_summary.csv", newline="")))
    assert [(r["name"], r["status"]) for r in lines] == [("bee", "done"), ("broken", "failed")]
    # sources that name no slide: nothing is run, exit 1
    assert main(["slide", str(tmp_path / "none-*.svs"), *argv[2:]]) == 1
    assert "matches no file" in capsys.readouterr().err
