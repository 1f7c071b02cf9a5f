"""``pannuke-hf slide`` and ``make-synthetic-slide`` on the command line: outputs, bad input, exit codes, resume after SIGKILL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pannuke_hf.cli import main as cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny saved UNet-FCN checkpoint (model + processor without resize)."""
    from _models import tiny_unet_fcn

    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    folder = tmp_path_factory.mktemp("model")
    tiny_unet_fcn().save_pretrained(folder)
    UNetFCNImageProcessor(do_resize=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slide")
    assert cli(["make-synthetic-slide", str(folder / "s.tiff"), "--size", "700x520", "--workers", "2"]) == 0
    return folder / "s.tiff"


def _slide(args, capsys):
    code = cli(["slide", *map(str, args), "--workers", "0", "--postprocess-workers", "0", "--no-progress"])
    out, err = capsys.readouterr()
    # transformers' weight-loading bar also writes to stderr: keep our own lines
    err = "".join(
        line + "\n"
        for line in err.replace("\r", "\n").splitlines()
        if line.startswith(("pannuke-hf", "warning", "/"))
    )
    return code, out, err


def test_make_synthetic_slide_command(tmp_path, capsys):
    code = cli(
        ["make-synthetic-slide", str(tmp_path / "x.tiff"), "--size", "600x400", "--mpp", "0.5", "--no-truth"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "600x400 px at 0.5 µm/px" in out
    assert (tmp_path / "x.tiff").is_file() and not (tmp_path / "x_truth.tiff").exists()
    with pytest.raises(SystemExit) as info:
        cli(["make-synthetic-slide", str(tmp_path / "y.tiff"), "--size", "600"])
    assert info.value.code == 2


def test_slide_command_writes_outputs_and_skips_done(slide, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _slide([slide, "--model", model_dir, "--out", out, "--region-size", "512"], capsys)
    assert code == 0, err
    assert "nuclei in" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["s.geojson.gz", "s_cells.parquet", "s_summary.json", "s_thumbnail.png"]
    summary = json.loads((out / "s_summary.json").read_text())
    assert summary["resolution"]["mpp_source"] == "metadata" and summary["status"] == "done"
    before = (out / "s_cells.parquet").stat().st_mtime_ns
    code, _, err = _slide([slide, "--model", model_dir, "--out", out], capsys)
    assert code == 0 and "skipped" in err
    assert (out / "s_cells.parquet").stat().st_mtime_ns == before


def test_bad_inputs_one_line_each(slide, model_dir, tmp_path, capsys):
    # not a slide at all
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide")
    code, _, err = _slide([fake, "--model", model_dir, "--out", tmp_path / "o1"], capsys)
    assert code == 1 and "fake.svs" in err and err.count("\n") == 1
    # unsupported format
    other = tmp_path / "scan.xyz"
    other.write_bytes(b"\0" * 100)
    code, _, err = _slide([other, "--model", model_dir, "--out", tmp_path / "o2"], capsys)
    assert code == 1 and "unsupported format .xyz" in err and err.count("\n") == 1
    # truncated slide: the header survives, the tiles do not
    data = slide.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 3])
    code, _, err = _slide([cut, "--model", model_dir, "--out", tmp_path / "o3"], capsys)
    assert code == 1 and "cut.tiff" in err and err.count("\n") == 1
    assert not (tmp_path / "o3" / "cut_summary.json").exists()
    # no µm/px: names --mpp; with --mpp it runs
    png = tmp_path / "plain.png"
    Image.fromarray(np.full((300, 300, 3), 240, np.uint8)).save(png)
    code, _, err = _slide([png, "--model", model_dir, "--out", tmp_path / "o4"], capsys)
    assert code == 1 and "--mpp" in err and err.count("\n") == 1
    # no tissue: empty outputs, a summary that says so, a warning
    code, _, err = _slide([png, "--model", model_dir, "--out", tmp_path / "o4", "--mpp", "0.25"], capsys)
    assert code == 0 and "no tissue" in err
    summary = json.loads((tmp_path / "o4" / "plain_summary.json").read_text())
    assert summary["nuclei"] == 0 and summary["tissue_mm2"] == 0
    with gzip.open(tmp_path / "o4" / "plain.geojson.gz", "rt") as fh:
        assert json.load(fh)["features"] == []
    # an output folder that cannot be created
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _slide([slide, "--model", model_dir, "--out", blocker / "sub"], capsys)
    assert code == 1 and "output folder" in err and err.count("\n") == 1
    # a slide that fails does not stop the others
    code, stdout, err = _slide([fake, slide, "--model", model_dir, "--out", tmp_path / "o5"], capsys)
    assert code == 1 and (tmp_path / "o5" / "s_summary.json").is_file()


@pytest.mark.slow  # ~50 s on two cores: every read box around the broken tile is re-read in blocks
def test_corrupt_tile_is_skipped_and_reported(slide, model_dir, tmp_path, capsys):
    import tifffile

    source = tmp_path / "big.tiff"
    assert (
        cli(
            [
                "make-synthetic-slide",
                str(source),
                "--size",
                "1500x1100",
                "--tissue-fraction",
                "0.93",
                "--no-truth",
            ]
        )
        == 0
    )
    broken = tmp_path / "broken.tiff"
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tf:
        page = tf.pages[0]
        # the bottom-right tile of level 0: garbage instead of JPEG data
        index = len(page.dataoffsets) - 1
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    data[offset : offset + count] = b"\xff" * count
    broken.write_bytes(bytes(data))
    code, _, err = _slide([broken, "--model", model_dir, "--out", tmp_path, "--region-size", "256"], capsys)
    assert code == 0
    assert "unreadable parts" in err
    summary = json.loads((tmp_path / "broken_summary.json").read_text())
    assert summary["regions_failed"] >= 1 and summary["failed_area_mm2"] > 0
    # only the unreadable blocks are lost: every region is still done, nuclei found elsewhere
    assert summary["regions_done"] == summary["tiling"]["regions"] - summary["regions_skipped_no_tissue"]
    # one 256-px tile lost, counted in each overlapping read box that held it (an upper bound)
    assert 0 < summary["failed_area_mm2"] <= summary["regions_failed"] * (384 * 0.25 / 1000) ** 2
    assert summary["nuclei"] > 0


def test_usage_errors_exit_2(slide, model_dir, tmp_path):
    for extra in (["--mpp", "0"], ["--region-size", "0"], ["--tissue-mask", str(tmp_path / "none.png")]):
        with pytest.raises(SystemExit) as info:
            cli(["slide", str(slide), "--model", str(model_dir), "--out", str(tmp_path), *extra])
        assert info.value.code == 2


@pytest.mark.slow
def test_sigkill_mid_slide_then_resume_equals_uninterrupted(slide, model_dir, tmp_path):
    """Kill -9 a run once some chunks are written; the resumed run's files equal an uninterrupted run's."""
    import pyarrow.parquet as pq

    common = [
        "--model",
        str(model_dir),
        "--region-size",
        "128",
        "--workers",
        "0",
        "--postprocess-workers",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "pannuke_hf.cli", "slide", str(slide), "--out", str(tmp_path / "b"), *common]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "b" / "s.parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part-*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("part-*.json")))
    assert done_before >= 2 and not (tmp_path / "b" / "s_summary.json").exists()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    whole = [
        sys.executable,
        "-m",
        "pannuke_hf.cli",
        "slide",
        str(slide),
        "--out",
        str(tmp_path / "a"),
        *common,
    ]
    assert subprocess.run(whole, env=env, capture_output=True).returncode == 0
    assert pq.read_table(tmp_path / "a" / "s_cells.parquet").equals(
        pq.read_table(tmp_path / "b" / "s_cells.parquet")
    )
    with gzip.open(tmp_path / "a" / "s.geojson.gz") as a, gzip.open(tmp_path / "b" / "s.geojson.gz") as b:
        assert a.read() == b.read()


@pytest.mark.slow  # torch.compile takes tens of seconds on two cores
def test_compile_flag_compiles_and_finds_the_same_nuclei(slide, model_dir, tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq
    import torch

    compiled = []
    real_compile = torch.compile

    def spy(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, *args, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    tables = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        code, _, err = _slide(
            [slide, "--model", model_dir, "--out", out, "--region-size", "512", *flag], capsys
        )
        assert code == 0, err
        tables[bool(flag)] = pq.read_table(out / "s_cells.parquet").select(
            ["id", "label_id", "centroid_x", "centroid_y"]
        )
    assert compiled == ["UNetFCNForSemanticSegmentation"]  # only the --compile run compiled the model
    eager, comp = tables[False].to_pydict(), tables[True].to_pydict()
    assert eager["id"] == comp["id"] and eager["label_id"] == comp["label_id"]
    np.testing.assert_allclose(comp["centroid_x"], eager["centroid_x"], atol=1e-3)
    np.testing.assert_allclose(comp["centroid_y"], eager["centroid_y"], atol=1e-3)
