"""``--push_to_hub``: model + processor + card reach a Hub (a local test server) and load back;
the token never lands in a file or a log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.training.run import run

REPO_ID = "pannuke-user/unet-fcn-tiny"


def tiny_argv(data_dir, out_dir, *extra: str) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--output_dir", str(out_dir),
        "--image_size", "32", "--base_channels", "4", "--num_stages", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--learning_rate", "0.01", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--report_to", "none", "--seed", "0", "--torch_num_threads", "1",
        "--push_to_hub", "true", "--hub_model_id", REPO_ID,
        *extra,
    ]  # fmt: skip


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("token_from", ["environment", "flag"])
def test_push_round_trip_without_leaking_the_token(
    hub_server, raw_root, tmp_path, monkeypatch, capsys, caplog, token_from
):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    extra = []
    if token_from == "flag":
        monkeypatch.delenv("HF_TOKEN", raising=False)
        extra = ["--hub_token", hub_server.token]
    metrics = run(tiny_argv(raw_root, out, *extra))
    assert f"Bearer {hub_server.token}" in hub_server.authorizations()  # the push was authenticated

    # The pushed checkpoint loads back through the Hub API, identical to the local one.
    pushed = AutoModelForSemanticSegmentation.from_pretrained(REPO_ID)
    local = AutoModelForSemanticSegmentation.from_pretrained(out)
    for key, value in local.state_dict().items():
        assert torch.equal(value, pushed.state_dict()[key]), key
    processor = AutoImageProcessor.from_pretrained(REPO_ID)
    assert processor.size["height"] == 32

    # The card: licence, dataset, tags, library and the model-index with mIoU and mDice.
    card = hub_server.file_bytes(REPO_ID, "README.md").decode()
    header = yaml.safe_load(card.split("---")[1])
    assert header["license"] == "cc-by-nc-sa-4.0"
    assert header["library_name"] == "transformers" and header["datasets"] == ["pannuke"]
    assert {"image-segmentation", "pathology", "pannuke"} <= set(header["tags"])
    result = header["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "validation"
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values["mIoU"] == pytest.approx(round(100 * metrics["eval_mean_iou"], 2))
    assert values["mDice"] == pytest.approx(round(100 * metrics["eval_mean_dice"], 2))
    for section in ("## Training configuration", "## Results", "## Intended use", "## Citation", "| mIoU |"):
        assert section in card

    # No file written or pushed, and no log line, holds the token.
    token = hub_server.token.encode()
    assert _files_containing(out, token) == []
    assert _files_containing(Path(hub_server.root), token) == []
    captured = capsys.readouterr()
    assert hub_server.token not in captured.out + captured.err
    assert hub_server.token not in caplog.text
