"""Slides over several processes (pannuke_hf.slides.distributed): two CPU processes (gloo, started
by torchrun as on GPUs) write the same files as one process, a process killed mid-slide leaves
parts that a re-run finishes, and a process failing on one slide fails that slide for all
without hanging the others."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_slide import OracleModel, plain_processor

TESTS = Path(__file__).resolve().parent
SLIDE_KWARGS = dict(region_size=192, margin=48, chunk_regions=2, workers=0, postprocess_workers=0, threads=1)
#: Summary fields of the run rather than the slide: timings, and the windows this process ran.
RUN_FIELDS = ("seconds", "tiles_per_second", "seconds_per_mm2", "windows_this_run")
OUTPUTS = ("_cells.parquet", ".geojson.gz", "_thumbnail.png")

# What every process runs: the cohort API with the oracle model; env variables plant failures.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path.insert(0, os.environ["TESTS_DIR"])
    from test_slide import OracleModel, plain_processor
    from pannuke_hf.slides import pipeline
    from pannuke_hf.slides.cohort import segment_cohort
    from pannuke_hf.slides.distributed import init_processes

    processes = init_processes("cpu")
    rank, marker = processes.rank, os.environ["MARKER_DIR"]
    real_write = pipeline.write_part

    def write_part(parts_dir, chunk, records, info):
        name = parts_dir.name[: -len(".parts")]
        if os.environ.get("FAIL") == f"{rank}:{name}":
            raise RuntimeError(f"planted failure on {name}")
        real_write(parts_dir, chunk, records, info)
        with open(os.path.join(marker, f"rank{rank}.txt"), "a") as fh:
            fh.write(f"{name} {chunk}\\n")
        if os.environ.get("KILL") == str(rank):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost machine would

    pipeline.write_part = write_part
    kwargs = json.loads(os.environ["SLIDE_KWARGS"])
    kwargs["shard"] = os.environ.get("SHARD", "chunks")
    rows = segment_cohort(sys.argv[2:], OracleModel(), plain_processor(), out_dir=sys.argv[1], processes=processes,
                          progress=False, **kwargs)
    with open(os.path.join(marker, f"rows{rank}.json"), "w") as fh:
        json.dump({"world": processes.world_size, "rows": rows}, fh)
    processes.close()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, out, sources, marker, **env) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 child.py OUT SOURCES...`` on the CPU."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "TESTS_DIR": str(TESTS), "MARKER_DIR": str(marker),
               "SLIDE_KWARGS": json.dumps(SLIDE_KWARGS), **env}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(script), str(out), *map(str, sources)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=600)


def one_process(slide, out):
    from pannuke_hf.slides.cohort import segment_cohort

    return segment_cohort(
        [slide], OracleModel(), plain_processor(), out_dir=out, progress=False, **SLIDE_KWARGS
    )


def assert_same_outputs(a: Path, b: Path, name: str) -> None:
    """Byte-identical files, and summaries equal but for the run fields."""
    for suffix in OUTPUTS:
        assert (a / f"{name}{suffix}").read_bytes() == (b / f"{name}{suffix}").read_bytes(), suffix
    sa, sb = (json.loads((d / f"{name}_summary.json").read_text()) for d in (a, b))
    assert {k: v for k, v in sa.items() if k not in RUN_FIELDS} == {
        k: v for k, v in sb.items() if k not in RUN_FIELDS
    }
    assert not (b / f"{name}.parts").exists()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from pannuke_hf.slides import make_synthetic_slide

    folder = tmp_path_factory.mktemp("dist")
    make_synthetic_slide(folder / "s.tiff", 760, 560, mpp=0.25, seed=4, tissue_fraction=0.9, workers=2)
    make_synthetic_slide(folder / "t.tiff", 500, 400, mpp=0.25, seed=5, tissue_fraction=0.9, workers=2)
    return folder


# ---------------------------------------------------------------------------------------------
# the deal
# ---------------------------------------------------------------------------------------------


def test_share_chunks_balances_tissue_and_gives_each_chunk_once():
    from pannuke_hf.slides.distributed import share_chunks

    weights = [4, 4, 0, 1, 3, 2, 0, 4, 4]
    for world in (1, 2, 3, 5):
        owners = share_chunks(weights, world)
        assert len(owners) == len(weights) and set(owners) <= set(range(world))
        loads = [sum(w for w, r in zip(weights, owners) if r == k) for k in range(world)]
        assert max(loads) - min(loads) <= max(weights)
        assert share_chunks(weights, world) == owners  # every process computes the same deal
    assert share_chunks(weights, 1) == [0] * len(weights)


def test_one_process_without_a_launcher(monkeypatch):
    from pannuke_hf.slides.distributed import Processes, init_processes

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    processes = init_processes("cpu")
    assert processes == Processes(device="cpu")
    assert processes.all_gather(3) == [3] and processes.broadcast("x") == "x"


# ---------------------------------------------------------------------------------------------
# two processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(slides, tmp_path):
    """Both slides of a cohort, each shared chunk by chunk: the files of a single process."""
    single = tmp_path / "single"
    rows1 = [one_process(slides / n, single)[0] for n in ("s.tiff", "t.tiff")]
    done = launch(tmp_path, tmp_path / "two", [slides / "s.tiff", slides / "t.tiff"], tmp_path / "marker")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("s", "t"):
        assert_same_outputs(single, tmp_path / "two", name)
    # really two processes, each writing parts of each slide
    written = {r: (tmp_path / "marker" / f"rank{r}.txt").read_text().split("\n") for r in (0, 1)}
    for name in ("s", "t"):
        assert all(any(line.startswith(name + " ") for line in written[r]) for r in (0, 1)), written
    # every process returns the same rows; the table is the one-process table but for seconds
    results = [json.loads((tmp_path / "marker" / f"rows{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2] and results[0]["rows"] == results[1]["rows"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "slide")} for r in rows]  # noqa: E731
    assert strip(results[0]["rows"]) == strip(rows1)


@pytest.mark.slow
def test_shard_slides_gives_each_process_whole_slides(slides, tmp_path):
    single = tmp_path / "single"
    for name in ("s.tiff", "t.tiff"):
        one_process(slides / name, single)
    done = launch(
        tmp_path, tmp_path / "two", [slides / "s.tiff", slides / "t.tiff"], tmp_path / "m", SHARD="slides"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # slide i to process i mod 2, whole
    for rank, name in ((0, "s"), (1, "t")):
        lines = [line for line in (tmp_path / "m" / f"rank{rank}.txt").read_text().split("\n") if line]
        assert lines and {line.split()[0] for line in lines} == {name}
        assert_same_outputs(single, tmp_path / "two", name)
    results = [json.loads((tmp_path / "m" / f"rows{r}.json").read_text())["rows"] for r in (0, 1)]
    assert results[0] == results[1] and [r["status"] for r in results[0]] == ["done", "done"]
    lines = (tmp_path / "two" / "cohort_summary.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in lines[1:]] == ["s", "t"]


@pytest.mark.slow
def test_a_killed_process_leaves_parts_a_rerun_finishes(slides, tmp_path):
    one_process(slides / "s.tiff", tmp_path / "single")
    out = tmp_path / "two"
    killed = launch(tmp_path, out, [slides / "s.tiff"], tmp_path / "m1", KILL="1")
    assert killed.returncode != 0
    assert not (out / "s_summary.json").exists() and not (out / "s_cells.parquet").exists()
    left = sorted(int(p.stem.split("-")[1]) for p in (out / "s.parts").glob("part-*.json"))
    by_rank1 = [
        int(line.split()[1]) for line in (tmp_path / "m1" / "rank1.txt").read_text().split("\n") if line
    ]
    assert len(by_rank1) == 1 and by_rank1[0] in left  # its one part survived the kill
    total = json.loads((tmp_path / "single" / "s_summary.json").read_text())["tiling"]["chunks"]
    assert len(left) < total
    # a re-run (two processes again) does only the chunks not on disk, and writes the same files
    again = launch(tmp_path, out, [slides / "s.tiff"], tmp_path / "m2")
    assert again.returncode == 0, again.stderr[-3000:]
    redone = sorted(int(line.split()[1]) for r in (0, 1) if (tmp_path / "m2" / f"rank{r}.txt").exists()
                    for line in (tmp_path / "m2" / f"rank{r}.txt").read_text().split("\n") if line)  # fmt: skip
    assert redone == sorted(set(range(total)) - set(left))
    assert_same_outputs(tmp_path / "single", out, "s")


@pytest.mark.slow
def test_a_slide_failing_in_one_process_fails_for_all_and_the_cohort_goes_on(slides, tmp_path):
    out = tmp_path / "two"
    done = launch(tmp_path, out, [slides / "s.tiff", slides / "t.tiff"], tmp_path / "m", FAIL="1:s")
    assert done.returncode == 0, done.stderr[-3000:]  # the child script returns; the CLI would exit 1
    results = [json.loads((tmp_path / "m" / f"rows{r}.json").read_text())["rows"] for r in (0, 1)]
    for rows in results:
        assert [(r["name"], r["status"]) for r in rows] == [("s", "failed"), ("t", "done")]
        assert "planted failure on s" in rows[0]["error"] and "process 1" in rows[0]["error"]
    assert not (out / "s_summary.json").exists() and (out / "t_summary.json").is_file()
    lines = (out / "cohort_summary.csv").read_text().splitlines()
    assert lines[1].split(",")[:3] == [str(slides / "s.tiff"), "s", "failed"]


@pytest.mark.slow
def test_cli_under_torchrun_equals_one_process(slides, tmp_path):
    from _models import tiny_unet_fcn

    model = tmp_path / "model"
    tiny_unet_fcn().save_pretrained(model)
    plain_processor().save_pretrained(model)
    args = [str(slides / "t.tiff"), "--model", str(model), "--device", "cpu", "--region-size", "192",
            "--margin", "48", "--workers", "0", "--postprocess-workers", "0", "--threads", "1", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "pannuke_hf.cli", "slide", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "pannuke_hf.cli", "slide", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("t.tiff:") == 1  # process 0 reports, once
    assert_same_outputs(tmp_path / "one", tmp_path / "two", "t")
