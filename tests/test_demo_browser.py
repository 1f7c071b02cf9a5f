"""The demo page in a real headless browser (Debian's chromium driven by Playwright).

`pannuke-hf demo` runs in a subprocess on a free port of 127.0.0.1 with a tiny random checkpoint;
the browser loads the page, uploads a patch, waits for the result and checks the overlay and the
counts table against what `pannuke-hf predict` writes for the same image; then it uploads a file
that is not an image and checks the message, and that the page still serves a good upload.

Screenshots (empty page, a result, an error) go to ``$PANNUKE_SCREENSHOTS`` when set (e.g.
``PANNUKE_SCREENSHOTS=docs/screenshots``), else to the test's temporary folder. The page serves a
tiny random checkpoint (with the model card of a run on generated data), or the checkpoint folder
``$PANNUKE_DEMO_MODEL`` when set: the screenshots in docs/ come from the trained demo checkpoint
(``python train.py --output_dir demo_output``, then ``PANNUKE_DEMO_MODEL=demo_output``).

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and ``pip install playwright``; skipped,
saying which is missing, without them.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pannuke_hf import constants

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
#: Seconds allowed for the server to start and for one prediction (two shared CPU cores).
START_TIMEOUT = 240
RUN_TIMEOUT_MS = 180_000

pytestmark = pytest.mark.slow


def _skip_without_browser() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install -y --no-install-recommends chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """`pannuke-hf demo --model <checkpoint>` on a free port; yields (url, checkpoint)."""
    _skip_without_browser()
    from test_demo_app import save_tiny_checkpoint

    from pannuke_hf.training.model_card import render_model_card

    root = tmp_path_factory.mktemp("demo_server")
    checkpoint = root / "demo_output"  # served as `--model demo_output`, the name the page shows
    if os.environ.get("PANNUKE_DEMO_MODEL"):
        checkpoint.symlink_to(Path(os.environ["PANNUKE_DEMO_MODEL"]).resolve(), target_is_directory=True)
    else:
        save_tiny_checkpoint(checkpoint)
        (checkpoint / "README.md").write_text(render_model_card("tiny", synthetic_data=True))
    port = _free_port()
    env = dict(
        os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost"
    )
    log_path = root / "server.log"
    command = [
        sys.executable,
        "-m",
        "pannuke_hf.cli",
        "demo",
        "--model",
        checkpoint.name,
        "--port",
        str(port),
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*command, "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env
        )
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + START_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`pannuke-hf demo` exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if opener.open(url, timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`pannuke-hf demo` did not answer within {START_TIMEOUT} s:\n{log_path.read_text()}"
                )
            time.sleep(1)
        yield url, checkpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def predict_command(image: Path, checkpoint: Path, out: Path) -> tuple[dict[str, dict[str, int]], np.ndarray]:
    """What `pannuke-hf predict --instances` writes for one image: its counts by class name
    (``{"pixels": class_counts.csv, "nuclei": nuclei_counts.csv}``) and the label map."""
    command = [sys.executable, "-m", "pannuke_hf.cli", "predict", str(image), "--model", str(checkpoint)]
    command += ["--out", str(out), "--device", "cpu", "--no-progress", "--instances"]
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    counts = {}
    for key, file in (("pixels", "class_counts.csv"), ("nuclei", "nuclei_counts.csv")):
        with open(out / file, newline="") as fh:
            (row,) = list(csv.DictReader(fh))
        counts[key] = {name: int(row[name]) for name in constants.CLASS_NAMES[1:]}
    with Image.open(out / f"{image.stem}_labels.png") as im:
        labels = np.array(im)
    return counts, labels


def table_rows(page) -> list[list[str]]:
    """The data rows of the counts table as shown (header row left out)."""
    rows = page.locator("#counts [role=row]").all()
    cells = [[c.inner_text().strip() for c in row.locator("[role=gridcell], td").all()] for row in rows]
    return [r for r in cells if r and any(r)]


def test_upload_result_matches_predict_and_bad_upload_shows_a_message(demo_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from pannuke_hf.demo.processing import SUMMARY_HEADERS, example_paths, training_data_for

    url, checkpoint = demo_server
    shots = Path(os.environ.get("PANNUKE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    patch = example_paths()[0]
    expected_counts, expected_labels = predict_command(patch, checkpoint, tmp_path / "predict")
    bad = tmp_path / "scan_broken.png"
    bad.write_bytes(b"this file has a .png name but holds text")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="domcontentloaded", timeout=RUN_TIMEOUT_MS)
            run = page.locator("#run")
            expect(run).to_be_visible(timeout=RUN_TIMEOUT_MS)
            legend = page.locator("#pannuke-legend")
            for name in constants.CLASS_FULL_NAMES[1:]:
                expect(legend).to_contain_text(name)
            # the footer says what the checkpoint was trained on (its card), never "PanNuke" blindly
            footer = page.locator("#footer")
            expect(footer).to_contain_text("A research demo, not a diagnostic tool.")
            if training_data_for(checkpoint) is not None and training_data_for(checkpoint).generated:
                expect(footer).to_contain_text("generated PanNuke-format data")
                expect(footer).not_to_contain_text("trained on PanNuke")
            page.screenshot(path=str(shots / "demo_empty.png"), full_page=True)

            # 1. a patch: the overlay appears and the table matches `pannuke-hf predict`
            page.locator("#inputs input[type=file]").set_input_files(str(patch))
            expect(page.locator("#inputs")).to_contain_text(patch.stem)
            run.click()
            expect(page.locator("#status")).to_contain_text("Segmented 1 image(s)", timeout=RUN_TIMEOUT_MS)
            overlay = page.locator("#overlay img").first
            expect(overlay).to_be_visible()
            shown = page.request.get(overlay.get_attribute("src"))
            assert shown.ok
            picture = np.array(Image.open(io.BytesIO(shown.body())).convert("RGB"))
            original = np.array(Image.open(patch).convert("RGB"))
            assert picture.shape == original.shape
            background = expected_labels == 0
            nuclei = ~background
            assert nuclei.any() and background.any()
            np.testing.assert_array_equal(picture[background], original[background])  # untouched
            assert (picture[nuclei] != original[nuclei]).any(axis=-1).mean() > 0.9  # coloured

            rows = table_rows(page)
            assert len(rows) == constants.NUM_LABELS - 1
            for column, key in (("label-map pixels", "pixels"), ("nuclei", "nuclei")):
                index = SUMMARY_HEADERS.index(column)
                shown_counts = {row[1]: int(row[index]) for row in rows}
                assert shown_counts == {
                    constants.CLASS_FULL_NAMES[k]: expected_counts[key][constants.CLASS_NAMES[k]]
                    for k in range(1, constants.NUM_LABELS)
                }, column
            assert sum(expected_counts["nuclei"].values()) > 0
            for suffix in ("_labels.png", "_instances.png", "_nuclei.csv", "_nuclei.geojson"):
                expect(page.locator(f'#downloads a[href$="/{patch.stem}{suffix}"]')).to_have_count(1)
            page.screenshot(path=str(shots / "demo_result.png"), full_page=True)

            # 2. a file that is not an image: a readable message, no traceback
            page.reload(wait_until="domcontentloaded")
            expect(run).to_be_visible(timeout=RUN_TIMEOUT_MS)
            page.locator("#inputs input[type=file]").set_input_files(str(bad))
            expect(page.locator("#inputs")).to_contain_text(bad.stem)
            run.click()
            status = page.locator("#status")
            expect(status).to_contain_text("Could not process 1 file(s)", timeout=RUN_TIMEOUT_MS)
            expect(status).to_contain_text("scan_broken.png: this is not an image file")
            assert "Traceback" not in page.content()
            assert page.locator("#overlay img").count() == 0
            page.screenshot(path=str(shots / "demo_error.png"), full_page=True)

            # 3. the server keeps serving: the patch again, in the same page
            page.locator("#inputs input[type=file]").set_input_files(str(patch))
            expect(page.locator("#inputs")).to_contain_text(patch.stem)
            run.click()
            expect(status).to_contain_text("Segmented 1 image(s)", timeout=RUN_TIMEOUT_MS)
            expect(status).to_contain_text("scan_broken.png")  # both files were in the list
            expect(page.locator("#overlay img").first).to_be_visible()
        finally:
            browser.close()
