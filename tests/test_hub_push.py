"""``--push_to_hub``: model + processor + card reach a Hub (a local test server) and load back;
the token never lands in a file or a log; a pushed repository holds the model code and its
``auto_map`` and loads with ``trust_remote_code`` in a process that cannot import ``pannuke_hf``."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _isolated import run_without_pannuke_hf
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import pannuke_hf  # noqa: F401 - registers the model classes
from pannuke_hf.training.run import run

REPO_ID = "pannuke-user/unet-fcn-tiny"
MODEL_CODE_DIR = Path(pannuke_hf.__file__).resolve().parent / "models" / "unet_fcn"
#: The files a pushed checkpoint needs for ``trust_remote_code`` (README, "Loading").
CODE_FILES = ("configuration_unet_fcn.py", "modeling_unet_fcn.py", "image_processing_unet_fcn.py")
#: Written out, not read from the package: what ``config.json`` / ``preprocessor_config.json`` must map.
#: ``AutoModel`` too (the backbone), which transformers alone would leave out: every Auto class loads.
MODEL_AUTO_MAP = {
    "AutoConfig": "configuration_unet_fcn.UNetFCNConfig",
    "AutoModel": "modeling_unet_fcn.UNetFCNModel",
    "AutoModelForSemanticSegmentation": "modeling_unet_fcn.UNetFCNForSemanticSegmentation",
}
PROCESSOR_AUTO_MAP = {"AutoImageProcessor": "image_processing_unet_fcn.UNetFCNImageProcessor"}


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
    if token_from == "environment":  # once is enough: the pushed files do not depend on it
        remote_dir = tmp_path / "remote"
        remote_dir.mkdir()
        assert_repo_loads_with_remote_code(
            hub_server, REPO_ID, local, AutoImageProcessor.from_pretrained(out), remote_dir
        )

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
    for section in (
        "## Training configuration",
        "## Results",
        "## Intended use",
        "## Citation",
        "| mIoU (%) |",
    ):
        assert section in card

    # No file written or pushed, and no log line, holds the token.
    token = hub_server.token.encode()
    assert _files_containing(out, token) == []
    assert _files_containing(Path(hub_server.root), token) == []
    captured = capsys.readouterr()
    assert hub_server.token not in captured.out + captured.err
    assert hub_server.token not in caplog.text


# ------------------------------------------------------------------------------------------
# trust_remote_code from the Hub, in a process without pannuke_hf
# ------------------------------------------------------------------------------------------

# Runs in a fresh interpreter that cannot import pannuke_hf (tests/_isolated.py).
REMOTE_LOAD_SCRIPT = textwrap.dedent(
    """
    import sys

    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

    torch.set_num_threads(1)
    repo_id, expected_path = sys.argv[1], sys.argv[2]
    config = AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
    model = AutoModelForSemanticSegmentation.from_pretrained(repo_id, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
    names = [type(obj).__name__ for obj in (config, model, backbone, processor)]
    if names != ["UNetFCNConfig", "UNetFCNForSemanticSegmentation", "UNetFCNModel", "UNetFCNImageProcessor"]:
        raise SystemExit(f"the Auto classes gave {names}")
    for obj in (config, model, backbone, processor):
        module = type(obj).__module__
        if not module.startswith("transformers_modules."):
            raise SystemExit(f"{type(obj).__name__} came from {module}, not from the repository's code")
    if any(name.split(".")[0] == "pannuke_hf" for name in sys.modules):
        raise SystemExit("pannuke_hf was imported")

    expected = torch.load(expected_path)
    pixel_values = processor(expected["image"].numpy(), return_tensors="pt")["pixel_values"]
    if not torch.equal(pixel_values, expected["pixel_values"]):
        raise SystemExit("processor output differs from the original processor's")
    with torch.no_grad():
        outputs = model(pixel_values)
        features = backbone(pixel_values).last_hidden_state
    if not torch.equal(outputs.logits, expected["logits"]):
        diff = (outputs.logits - expected["logits"]).abs().max().item()
        raise SystemExit(f"logits differ from the original model's (max abs difference {diff})")
    if not torch.equal(features, expected["features"]):  # the backbone's trained weights, not random
        raise SystemExit("AutoModel's features differ from the original backbone's")
    height, width = expected["image"].shape[:2]
    segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[(height, width)])[0]
    if not torch.equal(segmentation, expected["segmentation"]):
        raise SystemExit("post-processed segmentation differs from the original processor's")
    print("REMOTE-CODE-OK", type(model).__module__, list(model.config.id2label.values()))
    """
)


def assert_repo_loads_with_remote_code(hub_server, repo_id: str, model, processor, work_dir: Path) -> None:
    """The pushed repository holds the model code and ``auto_map``, and loads without pannuke_hf.

    Args:
        hub_server: the fake Hub fixture the repository was pushed to.
        repo_id: the pushed repository.
        model, processor: the originals; the remote-code copies must give identical outputs.
        work_dir: a folder for the expected outputs and the subprocess's caches.
    """
    for name in CODE_FILES:  # the package's own code, byte for byte
        assert hub_server.file_bytes(repo_id, name) == (MODEL_CODE_DIR / name).read_bytes(), name
    config = json.loads(hub_server.file_bytes(repo_id, "config.json"))
    assert config["auto_map"] == MODEL_AUTO_MAP
    assert config["model_type"] == "unet_fcn"
    preprocessor = json.loads(hub_server.file_bytes(repo_id, "preprocessor_config.json"))
    assert preprocessor["auto_map"] == PROCESSOR_AUTO_MAP
    expected_path = save_expected_outputs(model, processor, work_dir)

    env = {
        "HF_ENDPOINT": hub_server.endpoint,
        "HF_TOKEN": hub_server.token,
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(work_dir / "remote_hf_home"),  # a fresh cache: everything comes from the Hub
    }
    before = len(hub_server.requests)
    done = run_without_pannuke_hf(
        REMOTE_LOAD_SCRIPT, work_dir, args=(repo_id, str(expected_path)), env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "REMOTE-CODE-OK transformers_modules." in done.stdout, done.stdout
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests[before:] if "/resolve/" in r.path}
    assert set(CODE_FILES) <= fetched  # the code really came from the Hub


def save_expected_outputs(model, processor, work_dir: Path) -> Path:
    """The originals' outputs (processor, logits, backbone features, segmentation) on one image,
    computed on one thread as the subprocess runs, saved to ``work_dir / "expected.pt"``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
        pixel_values = processor(image.numpy(), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            outputs = model.eval()(pixel_values)
            features = model.unet(pixel_values).last_hidden_state
        segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[(40, 48)])[0]
    finally:
        torch.set_num_threads(threads)
    expected_path = work_dir / "expected.pt"
    torch.save(
        {
            "image": image,
            "pixel_values": pixel_values,
            "logits": outputs.logits,
            "features": features,
            "segmentation": segmentation,
        },
        expected_path,
    )
    return expected_path


def test_model_and_processor_push_to_hub_load_with_remote_code(hub_server, tmp_path):
    from pannuke_hf.models.unet_fcn import (
        UNetFCNConfig,
        UNetFCNForSemanticSegmentation,
        UNetFCNImageProcessor,
    )

    torch.manual_seed(0)
    config = UNetFCNConfig(base_channels=4, num_stages=2, encoder_num_convs=[2, 2], decoder_num_convs=[2],
                           strides=[1, 1], downsamples=[True], encoder_dilations=[1, 1], decoder_dilations=[1])  # fmt: skip
    model = UNetFCNForSemanticSegmentation(config).eval()
    torch.nn.init.normal_(model.decode_head.classifier.weight, std=2.0)  # several classes predicted
    processor = UNetFCNImageProcessor(size={"height": 32, "width": 32})
    repo_id = "pannuke-user/unet-fcn-direct"
    model.push_to_hub(repo_id)
    processor.push_to_hub(repo_id)
    assert_repo_loads_with_remote_code(hub_server, repo_id, model, processor, tmp_path)


def test_saved_checkpoint_loads_with_every_auto_class_without_pannuke_hf(tmp_path):
    """A ``save_pretrained`` folder (no Hub): AutoConfig, AutoModel, AutoModelForSemanticSegmentation
    and AutoImageProcessor load it with ``trust_remote_code`` where pannuke_hf cannot be imported."""
    from _models import tiny_unet_fcn

    from pannuke_hf.models.unet_fcn import UNetFCNImageProcessor

    model = tiny_unet_fcn(seed=3)
    processor = UNetFCNImageProcessor(size={"height": 32, "width": 32})
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["auto_map"] == MODEL_AUTO_MAP
    expected_path = save_expected_outputs(model, processor, tmp_path)
    done = run_without_pannuke_hf(REMOTE_LOAD_SCRIPT, tmp_path, args=(str(folder), str(expected_path)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "REMOTE-CODE-OK transformers_modules." in done.stdout, done.stdout


def test_unreachable_hub_is_a_one_line_error(hub_server, raw_root, tmp_path, monkeypatch, capsys):
    """``--push_to_hub`` without a reachable Hub: exit status 1 and one line, not httpx's traceback."""
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    from pannuke_hf.training.run import main

    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", closed)
    monkeypatch.delenv("PANNUKE_HF_TRACEBACK", raising=False)
    assert main(tiny_argv(raw_root, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "error: the Hugging Face Hub:" in err and "Traceback" not in err
